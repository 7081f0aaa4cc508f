cmake_policy(VERSION 3.25)
# Installs the build tree into a scratch prefix, then configures, builds and runs the consumer
# against it: the find_package(bnorm CONFIG) path an engine takes; then builds and runs it again
# with the compiler and `pkg-config --cflags --libs bnorm` alone, the path of other builds.
# Inputs: -DBUILD_DIR= -DSOURCE_DIR= -DWORK_DIR= -DCXX= -DCC= -DPKG_CONFIG=
file(REMOVE_RECURSE "${WORK_DIR}")
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "failed: ${ARGN}\n${out}\n${err}")
  endif()
  message("${out}")
endfunction()
run(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${WORK_DIR}/prefix")
run(${CMAKE_COMMAND} -S "${SOURCE_DIR}" -B "${WORK_DIR}/build" -DCMAKE_BUILD_TYPE=Release
    "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix")
run(${CMAKE_COMMAND} --build "${WORK_DIR}/build")
run("${WORK_DIR}/build/consumer")
run("${WORK_DIR}/build/consumer_c")
# A project of C alone links the static library too (bnorm::bnorm brings the C++ runtime).
run(${CMAKE_COMMAND} -S "${SOURCE_DIR}/c_only" -B "${WORK_DIR}/build_c_only"
    -DCMAKE_BUILD_TYPE=Release "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix")
run(${CMAKE_COMMAND} --build "${WORK_DIR}/build_c_only")
run("${WORK_DIR}/build_c_only/consumer_c_only")
# Where the package has bnorm_mpi, `COMPONENTS mpi` finds it.
file(GLOB_RECURSE mpi_libraries "${WORK_DIR}/prefix/*/libbnorm_mpi.*")
if(mpi_libraries AND NOT EXISTS "${WORK_DIR}/build/consumer_mpi")
  message(FATAL_ERROR "the package installs ${mpi_libraries}, but find_package(bnorm "
                      "OPTIONAL_COMPONENTS mpi) did not find the mpi component")
endif()
if(EXISTS "${WORK_DIR}/build/consumer_mpi")  # a singleton MPI process, no mpirun
  set(ENV{OMPI_ALLOW_RUN_AS_ROOT} 1)
  set(ENV{OMPI_ALLOW_RUN_AS_ROOT_CONFIRM} 1)
  run("${WORK_DIR}/build/consumer_mpi")
endif()

file(GLOB_RECURSE pc_files "${WORK_DIR}/prefix/*/bnorm.pc")
list(LENGTH pc_files pc_count)
if(NOT pc_count EQUAL 1)
  message(FATAL_ERROR "expected one installed bnorm.pc, found: ${pc_files}")
endif()
get_filename_component(pc_dir "${pc_files}" DIRECTORY)
set(ENV{PKG_CONFIG_PATH} "${pc_dir}")
# A shared libbnorm.so in a prefix the loader does not search: the programs below find it as an
# engine's would, through LD_LIBRARY_PATH (CMake's builds above carry an rpath).
get_filename_component(library_dir "${pc_dir}" DIRECTORY)
if(DEFINED ENV{LD_LIBRARY_PATH} AND NOT "$ENV{LD_LIBRARY_PATH}" STREQUAL "")
  set(ENV{LD_LIBRARY_PATH} "${library_dir}:$ENV{LD_LIBRARY_PATH}")
else()  # no empty entry: it would search the working directory
  set(ENV{LD_LIBRARY_PATH} "${library_dir}")
endif()
execute_process(COMMAND ${PKG_CONFIG} --cflags --libs bnorm RESULT_VARIABLE result
                OUTPUT_VARIABLE flags ERROR_VARIABLE err OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "pkg-config --cflags --libs bnorm failed: ${err}")
endif()
separate_arguments(flags UNIX_COMMAND "${flags}")
run(${CXX} -std=c++17 "${SOURCE_DIR}/consumer.cpp" -o "${WORK_DIR}/consumer_pkg_config" ${flags})
run("${WORK_DIR}/consumer_pkg_config")
# A C compiler links the C++ library with its static dependencies (libstdc++: Libs.private).
execute_process(COMMAND ${PKG_CONFIG} --cflags --libs --static bnorm RESULT_VARIABLE result
                OUTPUT_VARIABLE static_flags ERROR_VARIABLE err OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "pkg-config --cflags --libs --static bnorm failed: ${err}")
endif()
separate_arguments(static_flags UNIX_COMMAND "${static_flags}")
run(${CC} -std=c99 "${SOURCE_DIR}/consumer.c" -o "${WORK_DIR}/consumer_c_pkg_config"
    ${static_flags})
run("${WORK_DIR}/consumer_c_pkg_config")

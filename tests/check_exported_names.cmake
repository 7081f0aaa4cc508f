cmake_policy(VERSION 3.25)
# What the library shows an engine that links it:
# - its global definitions are the C API's bnorm_ functions and C++ names in namespace bnorm:
#   any other (a helper given C linkage inside `extern "C"`, a function outside the namespace)
#   clashes with an engine's function of the same name when linked statically, and in a shared
#   library the engine's function replaces bnorm's; weak ones (inline functions, template
#   instantiations, their statics) may also be the standard library's, oneTBB's or xsimd's,
#   which merge with the engine's copies of the same code;
# - its internals (bnorm::detail, bnorm::kernels, xsimd's and oneTBB's code) are hidden
#   (bnorm/export.h): a shared libbnorm.so, or an engine's plugin linked against the static
#   one, exports the API and the standard library's weak instantiations, nothing else;
# - and no name of the API is hidden (a declaration of the public headers without BNORM_API,
#   which an engine linking the shared library could not call; seen in the static library,
#   whose objects keep hidden names global, where a shared one makes them local).
# Inputs: -DREADELF= -DLIBRARY=
execute_process(COMMAND "${READELF}" -sW "${LIBRARY}" OUTPUT_VARIABLE table RESULT_VARIABLE result
                ERROR_QUIET)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "readelf failed on ${LIBRARY}")
endif()

# The names defined (a section index, not UND) in rows of the symbol tables
# (Num: Value Size Type Bind Vis Ndx Name) whose binding and visibility match.
function(defined_names out binding visibility)
  string(REGEX MATCHALL "[^\n]* (${binding}) +(${visibility}) +[0-9]+ [^\n]+" rows "${table}")
  set(names "")
  foreach(row IN LISTS rows)
    string(REGEX REPLACE "^.* (${visibility}) +[0-9]+ " "" name "${row}")
    list(APPEND names "${name}")
  endforeach()
  list(REMOVE_DUPLICATES names)
  set(${out} "${names}" PARENT_SCOPE)
endfunction()

defined_names(strong "GLOBAL" "DEFAULT|HIDDEN|PROTECTED")
defined_names(merged "WEAK|UNIQUE" "DEFAULT|HIDDEN|PROTECTED")
defined_names(visible "GLOBAL|WEAK|UNIQUE" "DEFAULT")
defined_names(hidden "GLOBAL" "HIDDEN")
if(NOT strong OR NOT visible)
  message(FATAL_ERROR "no global or no visible definition in ${LIBRARY}: readelf's output changed?")
endif()
# Mangled names in namespace bnorm: functions and data (N), qualified members (NK, NKR, ...),
# what is local to a function (its statics, their guards and its lambdas, nested: Z, ZZ, GVZ),
# typeinfo and vtables (TI, TS, TV), thunks (Th). A sanitized build keeps lambdas weak.
set(api_namespace "^(_Z(Z*|GVZ+)N[KVRO]*|_ZT[ISV]N|_ZThn?[0-9]+_N)5bnorm")
# Beside them, what compilers make of their own: typeinfo of function, pointer, array and
# qualified types (clang's -fsanitize=function), clang's terminate helper.
set(library_namespaces "^(DW\\.ref\\.|_Z(Z*|GVZ+|T[ISV])N?[KVRO]*(St|Sa|3tbb|5xsimd|9__gnu_cxx)|\
_ZT[IS][FPAKRV]|__clang_call_terminate$)")
set(internal_namespace "N[KVRO]*(5bnorm6detail|5bnorm7kernels|5xsimd|3tbb)")
set(foreign "")
foreach(name IN LISTS strong)
  if(NOT name MATCHES "^bnorm_" AND NOT name MATCHES "${api_namespace}")
    list(APPEND foreign "${name}")
  endif()
endforeach()
foreach(name IN LISTS merged)
  if(NOT name MATCHES "${api_namespace}" AND NOT name MATCHES "${library_namespaces}")
    list(APPEND foreign "${name}")
  endif()
endforeach()
set(internal "")
foreach(name IN LISTS visible)
  if(name MATCHES "${internal_namespace}")
    list(APPEND internal "${name}")
  endif()
endforeach()
set(unexported "")
foreach(name IN LISTS hidden)
  if(name MATCHES "${api_namespace}" AND NOT name MATCHES "${internal_namespace}")
    list(APPEND unexported "${name}")
  endif()
endforeach()
if(foreign)
  message(FATAL_ERROR "global names outside bnorm_ and namespace bnorm (weak ones outside the "
                      "standard library's, oneTBB's and xsimd's too):\n${foreign}")
endif()
if(internal)
  message(FATAL_ERROR "internal names of default visibility (exported by a shared build):\n"
                      "${internal}")
endif()
if(unexported)
  message(FATAL_ERROR "API names without BNORM_API (hidden from a shared build's users):\n"
                      "${unexported}")
endif()
list(LENGTH strong strong_count)
list(LENGTH visible visible_count)
message("${strong_count} strong global definitions, each bnorm_ or in namespace bnorm; "
        "${visible_count} visible names, none of them internal; no API name hidden")

#!/usr/bin/python3
"""Writes torch_goldens.txt: PyTorch's own nn.BatchNorm*d outputs and gradients for multi-step
sequences.

Run with Debian's python3-torch (1.13):  /usr/bin/python3 tests/goldens/make_torch_goldens.py
The output is committed, so the C++ tests (test_goldens.cpp) need no torch. It also writes
torch_fold_goldens.txt: torch.nn.utils.fusion's folded weights and biases (test_fold.cpp), for
the layers it folds right (a transposed convolution with groups = 1 only).

Format, one record per line, whitespace separated:
  case NAME
  module KIND(1d|2d|3d) DTYPE(f32|f64) C EPS MOMENTUM(number|none) AFFINE(0|1) TRACK(0|1) LAYOUT(cf|cl)
  weight V... / bias V...              (only with AFFINE 1)
  step MODE(train|eval) RANK DIMS...
  x V...                               (memory order of LAYOUT)
  y V...                               (memory order of LAYOUT)
  dy V... / dx V...                    the step's output gradient and input gradient (autograd)
  dweight V... / dbias V...            the step's parameter gradients (only with AFFINE 1)
  running_mean V... | none, running_var V... | none, nbt N
  end
"""
import os
import torch

torch.manual_seed(1234)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_goldens.txt")


def memory_order(t, layout):
    if layout == "cf" or t.dim() == 2:
        return t.contiguous().flatten()
    perm = [0] + list(range(2, t.dim())) + [1]
    return t.permute(*perm).contiguous().flatten()


def fmt(t):
    return " ".join(repr(float(v)) for v in t.flatten().tolist())


def make(kind, c, **kw):
    cls = {"1d": torch.nn.BatchNorm1d, "2d": torch.nn.BatchNorm2d, "3d": torch.nn.BatchNorm3d}[kind]
    return cls(c, **kw)


def record(lines, name, kind, dtype, c, steps, layout="cf", eps=1e-5, momentum=0.1,
           affine=True, track=True, random_affine=True):
    # PyTorch computes in float64 on the values a float32 caller would pass (rounded to float32),
    # so the goldens carry PyTorch's semantics without its float32 rounding (its channels-last
    # float32 path is off by 4.8 at large offsets on this machine kind).
    storage = torch.float32 if dtype == "f32" else torch.float64
    torch_dtype = torch.float64
    bn = make(kind, c, eps=eps, momentum=momentum, affine=affine,
              track_running_stats=track).to(torch_dtype)
    lines.append(f"case {name}")
    mom = "none" if momentum is None else repr(momentum)
    lines.append(f"module {kind} {dtype} {c} {eps!r} {mom} {int(affine)} {int(track)} {layout}")
    if affine:
        with torch.no_grad():
            if random_affine:
                bn.weight.copy_((torch.rand(c) + 0.5).to(storage))
                bn.bias.copy_(torch.randn(c).to(storage))
        lines.append("weight " + fmt(bn.weight.detach()))
        lines.append("bias " + fmt(bn.bias.detach()))
    for mode, x in steps:
        x = x.to(storage).to(torch_dtype)
        dy = torch.randn(*x.shape, dtype=torch.float64).to(storage).to(torch_dtype)
        bn.train(mode == "train")
        bn.zero_grad()
        before = [None if b is None else b.clone() for b in (bn.running_mean, bn.running_var)]
        x.requires_grad_(True)
        y = bn(x)
        y.backward(dy)
        check_native_backward(bn, x.detach(), x.grad, dy, before, mode == "train" or not track)
        lines.append(f"step {mode} {x.dim()} " + " ".join(str(d) for d in x.shape))
        lines.append("x " + fmt(memory_order(x.detach(), layout)))
        lines.append("y " + fmt(memory_order(y.detach(), layout)))
        lines.append("dy " + fmt(memory_order(dy, layout)))
        lines.append("dx " + fmt(memory_order(x.grad, layout)))
        if affine:
            lines.append("dweight " + fmt(bn.weight.grad))
            lines.append("dbias " + fmt(bn.bias.grad))
        for buf in ("running_mean", "running_var"):
            v = getattr(bn, buf)
            lines.append(f"{buf} " + ("none" if v is None else fmt(v)))
        nbt = bn.num_batches_tracked
        lines.append(f"nbt {0 if nbt is None else int(nbt)}")
    lines.append("end")


def check_native_backward(bn, x, grad_x, dy, running, batch_stats):
    """The autograd gradients again from aten's own kernels: native_batch_norm (for the saved
    statistics) and native_batch_norm_backward, with the running statistics before the step."""
    rm, rv = (None if r is None else r.clone() for r in running)
    weight = bn.weight.detach() if bn.affine else None
    bias = bn.bias.detach() if bn.affine else None
    _, save_mean, save_invstd = torch.ops.aten.native_batch_norm(
        x, weight, bias, rm, rv, batch_stats, 0.1, bn.eps)
    rm, rv = (None if r is None else r.clone() for r in running)
    dx, dw, db = torch.ops.aten.native_batch_norm_backward(
        dy, x, weight, rm, rv, save_mean, save_invstd, batch_stats, bn.eps,
        [True, bn.affine, bn.affine])
    assert torch.allclose(dx, grad_x, rtol=1e-9, atol=1e-12)
    if bn.affine:
        assert torch.allclose(dw, bn.weight.grad, rtol=1e-9, atol=1e-12)
        assert torch.allclose(db, bn.bias.grad, rtol=1e-9, atol=1e-12)


def randn(*shape, offset=0.0, scale=1.0):
    return torch.randn(*shape, dtype=torch.float64) * scale + offset


lines = [f"# generated by make_torch_goldens.py with torch {torch.__version__}"]
seed = torch.tensor([[0.7, 0.5, 0.5, 0.6], [0.5, 0.4, 0.6, 0.9]])
record(lines, "seed_1d_affine_false", "1d", "f32", 4, [("train", seed)], affine=False)
record(lines, "bn1d_ncl_steps", "1d", "f32", 3,
       [("train", randn(5, 3, 7)), ("train", randn(5, 3, 7, offset=2.0)),
        ("train", randn(5, 3, 7, scale=3.0)), ("eval", randn(5, 3, 7))])
record(lines, "bn2d_cumulative_channels_last", "2d", "f32", 4,
       [("train", randn(3, 4, 5, 6)), ("train", randn(3, 4, 5, 6, offset=-1.0)),
        ("train", randn(3, 4, 5, 6, scale=0.5)), ("eval", randn(2, 4, 5, 6))],
       layout="cl", momentum=None)
record(lines, "bn3d_untracked", "3d", "f32", 2,
       [("train", randn(2, 2, 3, 4, 5)), ("eval", randn(2, 2, 3, 4, 5, offset=1.0))], track=False)
record(lines, "bn2d_f64", "2d", "f64", 3,
       [("train", randn(2, 3, 4, 4)), ("train", randn(2, 3, 4, 4, offset=5.0)),
        ("eval", randn(2, 3, 4, 4))])
record(lines, "bn1d_nc_eval_first", "1d", "f32", 6,
       [("eval", randn(8, 6)), ("train", randn(8, 6, offset=3.0)), ("eval", randn(8, 6))],
       eps=1e-3, momentum=0.3)
record(lines, "bn3d_channels_last_f64", "3d", "f64", 5,
       [("train", randn(2, 5, 2, 3, 3)), ("eval", randn(1, 5, 2, 3, 3))], layout="cl")
record(lines, "bn1d_ncl_channels_last_offset", "1d", "f32", 17,
       [("train", randn(4, 17, 9, offset=100.0)), ("eval", randn(4, 17, 9, offset=100.0))],
       layout="cl", momentum=0.05)
record(lines, "bn2d_affine_false_channels_last", "2d", "f32", 6,
       [("train", randn(3, 6, 4, 5, offset=-2.0)), ("eval", randn(3, 6, 4, 5))],
       layout="cl", affine=False)
record(lines, "bn3d_eval_channels_first", "3d", "f32", 3,
       [("train", randn(2, 3, 3, 4, 4, scale=2.0)), ("eval", randn(2, 3, 3, 4, 4))])
record(lines, "bn1d_nc_f64_affine_false", "1d", "f64", 5,
       [("train", randn(7, 5, offset=1e3)), ("eval", randn(7, 5, offset=1e3))], affine=False)

with open(OUT, "w") as f:
    f.write("\n".join(lines) + "\n")
print(f"wrote {OUT}")


def write_fold_goldens(path):
    """torch.nn.utils.fusion on float32-representable values, in float64."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights
    out = [f"# generated by make_torch_goldens.py with torch {torch.__version__}"]

    def rep(shape, scale=1.0, offset=0.0):
        return (torch.randn(*shape, dtype=torch.float64) * scale + offset).float().double()

    def fold_case(name, layout, groups, weight_shape, channels, has_bias, transpose):
        w = rep(weight_shape)
        b = rep([channels]) if has_bias else None
        gamma, beta = rep([channels], 0.5, 1.0), rep([channels])
        mean = rep([channels], 2.0)
        var = (rep([channels]) ** 2 + 0.25).float().double()
        eps = 1e-5
        if layout == "linear":
            fw, fb = fuse_linear_bn_weights(w, b if b is not None else torch.zeros(channels,
                                            dtype=torch.float64), mean, var, eps, gamma, beta)
            layout = "output_first"
        else:
            fw, fb = fuse_conv_bn_weights(w, b, mean, var, eps, gamma, beta, transpose=transpose)
        out.append(f"fold {name} {layout} {groups} {len(weight_shape)} "
                   + " ".join(str(d) for d in weight_shape))
        out.append("weight " + fmt(w))
        out.append("bias " + (fmt(b) if b is not None else ""))
        for label, t in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var),
                         ("folded_weight", fw.detach()), ("folded_bias", fb.detach())):
            out.append(f"{label} " + fmt(t))
        out.append(f"eps {eps!r}")
        out.append("end")

    fold_case("linear", "linear", 1, [6, 4], 6, True, False)
    fold_case("linear_no_bias", "linear", 1, [5, 3], 5, False, False)
    fold_case("conv2d", "output_first", 1, [4, 3, 3, 3], 4, True, False)
    fold_case("conv2d_grouped_no_bias", "output_first", 2, [6, 2, 3, 3], 6, False, False)
    fold_case("conv1d", "output_first", 1, [5, 2, 3], 5, True, False)
    fold_case("conv3d", "output_first", 1, [3, 2, 2, 2, 2], 3, True, False)
    fold_case("conv_transpose2d", "transposed", 1, [3, 4, 3, 3], 4, True, True)
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"wrote {path}")


write_fold_goldens(os.path.join(os.path.dirname(OUT), "torch_fold_goldens.txt"))


def write_half_goldens(path):
    """PyTorch's own bfloat16 batch norm (bfloat16 input, float32 parameters and statistics:
    its CPU mixed type), output in bfloat16. PyTorch 1.13 has no float16 batch norm on CPU."""
    torch.manual_seed(4321)
    out = [f"# generated by make_torch_goldens.py with torch {torch.__version__}"]

    def half_case(name, shape, layout, mode, offset=0.0, scale=1.0):
        c = shape[1]
        x = (torch.randn(*shape) * scale + offset).to(torch.bfloat16)
        if layout == "cl":
            x = x.to(memory_format=torch.channels_last if len(shape) == 4
                     else torch.channels_last_3d)
        weight = torch.rand(c) + 0.5
        bias = torch.randn(c)
        running_mean = torch.randn(c) * 0.1
        running_var = torch.rand(c) + 0.5
        rm, rv = running_mean.clone(), running_var.clone()
        y = torch.nn.functional.batch_norm(x, rm, rv, weight, bias, mode == "train", 0.1, 1e-5)
        assert y.dtype == torch.bfloat16
        out.append(f"half {name} {layout} {mode} {len(shape)} " + " ".join(map(str, shape)))
        out.append("x " + fmt(memory_order(x.float(), layout)))
        for label, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                         ("running_var", running_var)):
            out.append(f"{label} " + fmt(t))
        out.append("y " + fmt(memory_order(y.float(), layout)))
        out.append("running_mean_after " + fmt(rm))
        out.append("running_var_after " + fmt(rv))
        out.append("end")

    half_case("bf16_nc_train", (16, 5), "cf", "train", offset=1.0)
    half_case("bf16_ncl_eval", (4, 3, 9), "cf", "eval")
    half_case("bf16_nchw_train", (3, 4, 5, 6), "cf", "train", scale=2.0)
    half_case("bf16_nhwc_train", (3, 4, 5, 6), "cl", "train", offset=-3.0)
    half_case("bf16_nhwc_eval", (2, 8, 3, 3), "cl", "eval")
    half_case("bf16_ndhwc_train", (2, 3, 2, 3, 4), "cl", "train", offset=20.0)
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"wrote {path}")


write_half_goldens(os.path.join(os.path.dirname(OUT), "torch_half_goldens.txt"))

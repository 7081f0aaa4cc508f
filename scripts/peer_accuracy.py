#!/usr/bin/env python3
"""PyTorch's own batch-norm accuracy where the mean is far from zero (the README's "Exact"
paragraph): training-mode F.batch_norm in float32 on standard-normal data plus an offset, both
memory formats, against a float64 reference of the same float32 inputs. Prints max |y - y_ref|.

    /usr/bin/python3 scripts/peer_accuracy.py     (Debian's python3-torch; seed 0)
"""
import torch
import torch.nn.functional as F


def max_error(shape, offset, channels_last, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float32) + offset
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    c = shape[1]
    y = F.batch_norm(x, torch.zeros(c), torch.ones(c), training=True, eps=1e-5)
    xd = x.double()
    mean = xd.mean(dim=(0, 2, 3), keepdim=True)
    var = ((xd - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    y_ref = (xd - mean) / torch.sqrt(var + 1e-5)
    return (y.double() - y_ref).abs().max().item()


if __name__ == "__main__":
    torch.set_num_threads(2)
    print(f"PyTorch {torch.__version__}, float32, max |y - y_ref| (float64 reference)")
    for shape in [(8, 64, 56, 56), (8, 32, 14, 14)]:
        for offset in [0.0, 1e5]:
            for channels_last in [False, True]:
                layout = "channels-last" if channels_last else "contiguous"
                error = max_error(shape, offset, channels_last)
                print(f"{shape} mean {offset:g} {layout}: {error:.3g}")

"""Fused fill / composite: native vs reference, autograd, torch.library checks, compile and export.

Tolerances: none. The native kernels compute in fp32 (fp64 for fp64) with FMA contraction off and
round once on store, exactly as the reference does, so their outputs are bit-identical for every
dtype, layout and mask (binary or soft); the noise is an integer hash, exact in fp32.
"""

import pytest
import torch

from facecomp import kernels
from facecomp.kernels import ops, reference

SHAPES = [(1, 3, 1, 1), (2, 3, 17, 23), (4, 3, 128, 128)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _layout(t, layout):
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a non-contiguous view: every other column of a wider tensor
        wide = torch.repeat_interleave(t, 2, dim=3)
        return wide[..., ::2]
    return t.contiguous()


def _inputs(shape, dtype, layout, soft, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = shape
    x = (torch.rand(shape, generator=g) * 2 - 1).to(dtype)
    m = torch.rand((n, 1, h, w), generator=g)
    m = (m if soft else (m > 0.5).float()).to(dtype)
    return _layout(x, layout), _layout(m, layout)


def test_noise_is_uniform_and_keyed():
    z = reference.noise((8, 3, 64, 64), seed=1, offset=0)
    assert z.min() >= -1 and z.max() < 1
    hist = torch.histc(z, bins=10, min=-1, max=1) / z.numel()
    assert torch.all((hist - 0.1).abs() < 0.005)
    assert abs(torch.corrcoef(torch.stack([z.flatten()[:-1], z.flatten()[1:]]))[0, 1]) < 0.01  # neighbours
    assert torch.equal(z, reference.noise((8, 3, 64, 64), seed=1, offset=0))
    assert not torch.equal(z, reference.noise((8, 3, 64, 64), seed=1, offset=1))
    assert not torch.equal(z, reference.noise((8, 3, 64, 64), seed=2, offset=0))
    with pytest.raises(ValueError, match="seed and offset"):
        reference.keys(-1, 0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("soft", [False, True])
def test_native_equals_reference(shape, dtype, layout, soft):
    x, m = _inputs(shape, dtype, layout, soft)
    g = _layout((torch.rand(shape) * 2 - 1).to(dtype), layout)
    for mask_channel in (False, True):
        a = kernels.fill(x, m, seed=7, offset=3, mask_channel=mask_channel, impl="native")
        b = kernels.fill(x, m, seed=7, offset=3, mask_channel=mask_channel, impl="ref")
        assert a.dtype == dtype and a.shape == (shape[0], 4 if mask_channel else 3, *shape[2:])
        assert torch.equal(a, b)
    if layout == "channels_last" and shape[2] > 1:
        assert a.is_contiguous(memory_format=torch.channels_last)  # output keeps x's format
    assert torch.equal(kernels.composite(x, g, m, impl="native"), kernels.composite(x, g, m, impl="ref"))


def test_fill_keeps_known_pixels_and_fills_the_hole():
    x, m = _inputs((2, 3, 32, 32), torch.float32, "contiguous", soft=False)
    out = kernels.fill(x, m, seed=0, mask_channel=True, impl="native")
    known = (m == 0).expand_as(x)
    assert torch.equal(out[:, :3][known], x[known])
    assert torch.equal(out[:, 3:], m)
    assert not torch.equal(out[:, :3][~known], x[~known])


@pytest.mark.parametrize("threads", [1, 2])
def test_same_result_on_any_thread_count(threads):
    x, m = _inputs((8, 3, 128, 128), torch.float32, "contiguous", soft=True)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        out = kernels.fill(x, m, seed=11, impl="native")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out, reference.fill(x, m, seed=11))


def test_gradients_match_the_reference():
    x, m = _inputs((2, 3, 8, 8), torch.float32, "channels_last", soft=True)
    g = torch.randn(2, 3, 8, 8)
    grads = []
    for impl in ("native", "ref"):
        xr, gr = x.clone().requires_grad_(), g.clone().requires_grad_()
        y = kernels.composite(xr, gr, m, impl=impl)
        z = kernels.fill(xr, m, seed=1, mask_channel=True, impl=impl)
        (y.square().sum() + (z * 3).sum()).backward()
        grads.append((xr.grad, gr.grad))
    assert torch.allclose(grads[0][0], grads[1][0]) and torch.allclose(grads[0][1], grads[1][1])
    # composite's gradient reaches g only inside the hole and x only outside it
    xr, gr = x.clone().requires_grad_(), g.clone().requires_grad_()
    hard = (m > 0.5).float()
    kernels.composite(xr, gr, hard, impl="native").sum().backward()
    assert torch.equal(gr.grad, hard.expand_as(g)) and torch.equal(xr.grad, 1 - hard.expand_as(x))


def test_gradcheck_float64():
    x, m = _inputs((1, 3, 5, 6), torch.float64, "contiguous", soft=True)
    g = torch.randn(1, 3, 5, 6, dtype=torch.float64)
    xr, gr = x.requires_grad_(), g.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: kernels.composite(a, b, m, impl="native"), (xr, gr))
    assert torch.autograd.gradcheck(lambda a: kernels.fill(a, m, seed=2, mask_channel=True, impl="native"), (xr,))


def test_opcheck():
    x, m = _inputs((2, 3, 9, 7), torch.float32, "channels_last", soft=True)
    g = torch.randn(2, 3, 9, 7).requires_grad_()
    k0, k1 = reference.keys(3, 4)
    torch.library.opcheck(ops.fill, (x.requires_grad_(), m, k0, k1, True))
    torch.library.opcheck(ops.composite, (x, g, m))
    torch.library.opcheck(ops.blend_backward, (g.detach(), m, True))


class _Wrap(torch.nn.Module):
    def forward(self, x, m):
        x_in = kernels.fill(x, m, seed=5, mask_channel=True, impl="native")
        return kernels.composite(x, torch.tanh(x_in[:, :3] * 2), m, impl="native")


def test_compile_fullgraph_and_export():
    x, m = _inputs((2, 3, 16, 16), torch.float32, "contiguous", soft=False)
    eager = _Wrap()(x, m)
    compiled = torch.compile(_Wrap(), fullgraph=True, backend="aot_eager")(x, m)
    assert torch.equal(compiled, eager)
    exported = torch.export.export(_Wrap(), (x, m))
    assert any("facecomp.fill" in str(n.target) for n in exported.graph.nodes)
    assert torch.equal(exported.module()(x, m), eager)


@pytest.mark.parametrize("bad, message", [
    (lambda x, m: (x[:, :2], m), "x must be"),
    (lambda x, m: (x, m[:, :, :-1]), "m must be"),
    (lambda x, m: (x.long(), m), "dtype"),
    (lambda x, m: (x, m.long()), "float tensor"),
])
def test_bad_inputs_name_the_problem(bad, message):
    x, m = _inputs((2, 3, 8, 8), torch.float32, "contiguous", soft=False)
    bx, bm = bad(x, m)
    for impl in ("ref", "native"):
        with pytest.raises(ValueError, match=message):
            kernels.fill(bx, bm, seed=0, impl=impl)
    with pytest.raises(ValueError, match="unknown impl"):
        kernels.fill(x, m, seed=0, impl="fast")
    with pytest.raises(RuntimeError, match="m is Double but x is Float"):  # the C++ TORCH_CHECK
        ops.fill(x, m.double(), 0, 0, False)
    with pytest.raises(ValueError, match="g has dtype"):
        kernels.composite(x, x.half(), m)


def test_auto_falls_back_once_when_the_build_fails(monkeypatch):
    from facecomp.kernels import build

    def broken():
        raise RuntimeError("compiler exploded")

    kernels._native_ops.cache_clear()
    kernels.native_available.cache_clear()
    monkeypatch.setattr(build, "load", broken)
    try:
        x, m = _inputs((1, 3, 4, 4), torch.float32, "contiguous", soft=False)
        with pytest.warns(UserWarning, match="native build failed"):
            out = kernels.fill(x, m, seed=1, impl="auto")
        assert torch.equal(out, reference.fill(x, m, seed=1))
        with pytest.raises(RuntimeError, match="compiler exploded"):
            kernels.fill(x, m, seed=1, impl="native")
    finally:
        kernels._native_ops.cache_clear()
        kernels.native_available.cache_clear()


def test_concurrent_builds_both_succeed(tmp_path):
    """Two processes building into an empty cache at once: both load a working module."""
    import os
    import subprocess
    import sys

    code = ("import torch; from facecomp.kernels import build, reference;"
            "mod = build.load(); x = torch.zeros(1, 3, 2, 2); m = torch.ones(1, 1, 2, 2);"
            "assert torch.equal(mod.fill(x, m, *reference.keys(0, 0), False), reference.fill(x, m, 0))")
    env = {**os.environ, "FACECOMP_KERNEL_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    builds = [p for p in tmp_path.iterdir() if p.name.startswith("facecomp_fused_")]
    assert len(builds) == 1 and not [p for p in tmp_path.iterdir() if p.name.startswith(".build")]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("shape", [(2, 3, 17, 23), (4, 3, 128, 128)])
def test_cuda_matches_cpu_bit_for_bit(dtype, layout, shape):
    """Forward and backward of both ops on the GPU equal the CPU's exactly, in every layout the CUDA
    kernels index through strides (odd sizes too: the pixel index is split by H*W and W there)."""
    x, m = _inputs(shape, dtype, layout, soft=True)
    g = _layout((torch.rand(shape) * 2 - 1).to(dtype), layout)
    cpu = kernels.fill(x, m, seed=9, offset=2, mask_channel=True, impl="native")
    gpu = kernels.fill(x.cuda(), m.cuda(), seed=9, offset=2, mask_channel=True, impl="native")
    assert torch.equal(gpu.cpu(), cpu)
    assert torch.equal(kernels.composite(x.cuda(), g.cuda(), m.cuda(), impl="native").cpu(),
                       kernels.composite(x, g, m, impl="native"))
    grads = []
    for dev in ("cpu", "cuda"):
        xr, gr = x.detach().to(dev).requires_grad_(), g.detach().to(dev).requires_grad_()
        y = kernels.composite(xr, gr, m.to(dev), impl="native")
        z = kernels.fill(xr, m.to(dev), seed=9, mask_channel=True, impl="native")
        (y.float().square().sum() + (z.float() * 3).sum()).backward()
        grads.append((xr.grad.cpu(), gr.grad.cpu()))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize("x_dtype", DTYPES)
@pytest.mark.parametrize("m_dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_a_mask_of_another_dtype_follows_one_rule(x_dtype, m_dtype):
    """A soft mask in a dtype other than x's (a bf16 image with an fp32 mask): native and reference agree
    bit for bit, and both round the mask to x's dtype first (reference.mask_as)."""
    x, _ = _inputs((2, 3, 17, 23), x_dtype, "channels_last", soft=True)
    m = torch.rand((2, 1, 17, 23), generator=torch.Generator().manual_seed(3)).to(m_dtype)
    g = (torch.rand(2, 3, 17, 23) * 2 - 1).to(x_dtype)
    for mask_channel in (False, True):
        a = kernels.fill(x, m, seed=4, offset=1, mask_channel=mask_channel, impl="native")
        b = kernels.fill(x, m, seed=4, offset=1, mask_channel=mask_channel, impl="ref")
        assert a.dtype == x_dtype and torch.equal(a, b)
        assert torch.equal(b, kernels.fill(x, m.to(x_dtype), seed=4, offset=1, mask_channel=mask_channel,
                                           impl="ref"))
    a, b = kernels.composite(x, g, m, impl="native"), kernels.composite(x, g, m, impl="ref")
    assert torch.equal(a, b) and torch.equal(b, reference.composite(x, g, m.to(x_dtype)))


def test_fill_checks_its_operands_before_choosing_a_device():
    """The C++ fill runs the shape/device/dtype checks before the device branch (the CUDA kernel would
    otherwise index a mis-shaped or CPU mask through a raw pointer). Meta tensors take the same branch
    a CUDA tensor does here: past the checks, not into the CPU kernel."""
    from facecomp.kernels import build

    mod = build.load()
    x = torch.empty(2, 3, 8, 8, device="meta")
    with pytest.raises(RuntimeError, match=r"fill: m must be \[N,1,H,W\]"):
        mod.fill(x, torch.empty(2, 1, 8, 7, device="meta"), 0, 0, False)
    with pytest.raises(RuntimeError, match="fill: m is on cpu but x is on meta"):
        mod.fill(x, torch.zeros(2, 1, 8, 8), 0, 0, False)
    with pytest.raises(RuntimeError, match="fill: m is Half but x is Float"):
        mod.fill(x, torch.empty(2, 1, 8, 8, device="meta", dtype=torch.half), 0, 0, False)
    m = torch.empty(2, 1, 8, 8, device="meta")
    for call in (lambda: mod.fill(x, m, 0, 0, False), lambda: mod.composite(x, x, m),
                 lambda: mod.blend_backward(x, m, True)):
        with pytest.raises(RuntimeError, match="unsupported device meta"):  # well-formed, but no kernel
            call()


def test_fake_kernels_refuse_what_the_native_op_refuses():
    """torch.compile, torch.export and meta tensors run the fake kernels, not the C++ checks."""
    x = torch.empty(2, 3, 8, 8, device="meta")
    m = torch.empty(2, 1, 8, 8, device="meta")
    with pytest.raises(RuntimeError, match=r"fill: m must be \[N,1,H,W\]"):
        ops.fill(x, m[..., :-1], 0, 0, False)
    with pytest.raises(RuntimeError, match="fill: m is torch.float16 but x is torch.float32"):
        ops.fill(x, m.half(), 0, 0, True)
    with pytest.raises(RuntimeError, match="composite: g is"):
        ops.composite(x, x[:1], m)
    with pytest.raises(RuntimeError, match="blend_backward: x must be"):
        ops.blend_backward(x[:, :2], m, False)
    assert ops.fill(x, m, 0, 0, True).shape == (2, 4, 8, 8)  # well-formed operands pass

"""Where the CPU step's time goes, op by op: every convolution of ResNet-18's step, both sides.

    pip install ".[peer]"
    python -m benchmarks.peer_ops    # about a minute on 2 cores

`benchmarks/peer.py` times whole steps, and the parts built here (`PARTS`:
one 3x3 convolution's forward and gradients, two reformulations of its weight
gradient, BatchNorm, the backbone, the SGD update). This module also takes the
backbone of its `jax_plain` / `torch_plain` sides (ResNet-18, CIFAR stem, full
width, 256 images of 32 x 32, float32) apart into its convolutions: each of the
network's distinct convolution shapes, forward, input gradient and weight
gradient, timed alone on both sides, the sides taking turns in worker
processes pinned to the same cores (peer.py's `time_parts`). Times are scaled
by how often the shape occurs in the network (`count`), so the rows add up to
the convolutions' share of one forward and backward.

- jax: `lax.conv_general_dilated` (NHWC, HWIO, as flax's `nn.Conv`), each
  gradient through `jax.vjp` in a jitted function of its own; XLA drops the
  forward the gradient does not need.
- torch: `F.conv2d` (NCHW, as torchvision's resnet18) without autograd, and
  `torch.ops.aten.convolution_backward` with one gradient asked for (what
  `torch.nn.grad.conv2d_input` / `conv2d_weight` and autograd call).

Writes `<--out>.json` (per op: jax ms, torch ms, `ratio_jax_to_torch` = torch
ms / jax ms, i.e. jax's speed relative to torch's; totals per kind) and `.md`.
Skips in one line where torch is missing, as peer.py does.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

IMAGES, SIZE = 256, 32   # two views of peer.py's batch of 128 (its jax_plain side)
# ResNet-18 with the CIFAR stem on 32 px images: (name, C_in, C_out, kernel, stride,
# input size, how many of the network's 20 convolutions have this shape).
CONVS = (
    ("stem 3x3 3->64 @32", 3, 64, 3, 1, 32, 1),
    ("3x3 64->64 @32", 64, 64, 3, 1, 32, 4),
    ("3x3 64->128 /2 @32", 64, 128, 3, 2, 32, 1),
    ("1x1 64->128 /2 @32", 64, 128, 1, 2, 32, 1),
    ("3x3 128->128 @16", 128, 128, 3, 1, 16, 3),
    ("3x3 128->256 /2 @16", 128, 256, 3, 2, 16, 1),
    ("1x1 128->256 /2 @16", 128, 256, 1, 2, 16, 1),
    ("3x3 256->256 @8", 256, 256, 3, 1, 8, 3),
    ("3x3 256->512 /2 @8", 256, 512, 3, 2, 8, 1),
    ("1x1 256->512 /2 @8", 256, 512, 1, 2, 8, 1),
    ("3x3 512->512 @4", 512, 512, 3, 1, 4, 3),
)
KINDS = ("forward", "input_gradient", "weight_gradient")


# ------------------------------------------- the parts of peer.py's step, each alone
PARTS = ("conv3x3_forward", "conv3x3_input_gradient", "conv3x3_weight_gradient",
         "conv3x3_weight_gradient_as_matmuls", "conv3x3_weight_gradient_nchw",
         "batchnorm_forward_backward", "backbone_forward", "backbone_forward_backward",
         "sgd_update")


def jax_parts() -> dict:
  """{part: () -> None} timing pieces of the jax_plain step, each jitted alone."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax import linen as nn
  from ssl_jax import models

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((IMAGES, SIZE, SIZE, 64), dtype=np.float32))
  conv = nn.Conv(64, (3, 3), padding=1, use_bias=False)
  cv = conv.init(jax.random.PRNGKey(0), x[:1])
  bn = nn.BatchNorm(use_running_average=False, momentum=0.9)
  bv = bn.init(jax.random.PRNGKey(0), x[:1])
  backbone = models.create_encoder("resnet18", stem="cifar", width=1.0).backbone
  images = jnp.asarray(rng.random((IMAGES, SIZE, SIZE, 3), dtype=np.float32))
  v = backbone.init(jax.random.PRNGKey(0), images[:2], train=True)

  # Every array is an argument, never a closed-over constant: XLA would fold work
  # on constants (a transpose of x, say) into the compiled program.
  def weight_gradient_as_matmuls(p, x):
    # The same gradient as conv3x3_weight_gradient, written as the nine matmuls
    # sum_pixels shifted(x)^T dy of a custom VJP (one per kernel tap): the candidate
    # that would replace XLA:CPU's own weight-gradient convolution.
    dy = 2 * conv.apply(p, x)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    dy2 = dy.reshape(-1, dy.shape[-1])
    taps = [jax.lax.dot_general(dy2, xp[:, i:i + SIZE, j:j + SIZE].reshape(-1, x.shape[-1]),
                                (((0,), (0,)), ((), ())))
            for i in range(3) for j in range(3)]          # each [C_out, C_in]
    return jnp.stack(taps).transpose(0, 2, 1).reshape(3, 3, x.shape[-1], -1)

  def conv_nchw(w, x):
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NCHW", "OIHW", "NCHW"))

  def fwd(p, images):
    h, _ = backbone.apply({"params": p, "batch_stats": v["batch_stats"]}, images, train=True,
                          mutable=["batch_stats"])
    return jnp.sum(h)
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
  opt = tx.init(v["params"])
  sgd = jax.jit(lambda p, o, g: optax.apply_updates(p, tx.update(g, o, p)[0]))
  square_sum = lambda f: lambda *a: jnp.sum(f(*a) ** 2)
  fns = {
      "conv3x3_forward": (jax.jit(conv.apply), (cv, x)),
      "conv3x3_input_gradient": (jax.jit(jax.grad(square_sum(conv.apply), argnums=1)),
                                 (cv, x)),
      "conv3x3_weight_gradient": (jax.jit(jax.grad(square_sum(conv.apply))), (cv, x)),
      "conv3x3_weight_gradient_as_matmuls": (jax.jit(weight_gradient_as_matmuls), (cv, x)),
      # torch's layouts (NCHW images, OIHW kernels): does XLA:CPU prefer them?
      "conv3x3_weight_gradient_nchw": (jax.jit(jax.grad(square_sum(conv_nchw))),
                                       (cv["params"]["kernel"].transpose(3, 2, 0, 1),
                                        x.transpose(0, 3, 1, 2))),
      "batchnorm_forward_backward": (jax.jit(jax.grad(square_sum(
          lambda x: bn.apply(bv, x, mutable=["batch_stats"])[0]))), (x,)),
      "backbone_forward": (jax.jit(fwd), (v["params"], images)),
      "backbone_forward_backward": (jax.jit(jax.grad(fwd)), (v["params"], images)),
      "sgd_update": (sgd, (v["params"], opt, v["params"])),
  }
  return {k: (lambda f=f, a=a: jax.block_until_ready(f(*a))) for k, (f, a) in fns.items()}


def torch_parts(threads: int) -> dict:
  import torch
  import torchvision

  torch.manual_seed(0)
  torch.set_num_threads(threads)
  x = torch.rand(IMAGES, 64, SIZE, SIZE)
  x_grad = x.clone().requires_grad_(True)
  conv = torch.nn.Conv2d(64, 64, 3, 1, 1, bias=False)
  conv_fixed = torch.nn.Conv2d(64, 64, 3, 1, 1, bias=False).requires_grad_(False)
  bn = torch.nn.BatchNorm2d(64)
  resnet = torchvision.models.resnet18()
  resnet.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
  resnet.maxpool, resnet.fc = torch.nn.Identity(), torch.nn.Identity()
  images = torch.rand(IMAGES, 3, SIZE, SIZE)
  opt = torch.optim.SGD(resnet.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
  for p in resnet.parameters():
    p.grad = torch.zeros_like(p)

  def no_grad(f):
    def run():
      with torch.no_grad():
        f()
    return run

  def backward(f):
    def run():
      f().pow(2).sum().backward()
    return run
  return {
      "conv3x3_forward": no_grad(lambda: conv(x)),
      "conv3x3_input_gradient": backward(lambda: conv_fixed(x_grad)),
      "conv3x3_weight_gradient": backward(lambda: conv(x)),
      # torch's side of the jax-only reformulations: its own weight gradient.
      "conv3x3_weight_gradient_as_matmuls": backward(lambda: conv(x)),
      "conv3x3_weight_gradient_nchw": backward(lambda: conv(x)),
      "batchnorm_forward_backward": backward(lambda: bn(x_grad)),
      "backbone_forward": no_grad(lambda: resnet(images)),
      "backbone_forward_backward": lambda: resnet(images).sum().backward(),
      "sgd_update": opt.step,
  }


# ------------------------------------------------------ the convolutions, op by op
def _names():
  return [f"{name} | {kind}" for name, *_ in CONVS for kind in KINDS]


def jax_ops() -> dict:
  """{'<conv> | <kind>': () -> None}: each op jitted alone, arrays passed as arguments."""
  import jax
  import numpy as np

  rng = np.random.default_rng(0)
  out = {}
  for name, cin, cout, k, stride, size, _ in CONVS:
    x = jax.numpy.asarray(rng.standard_normal((IMAGES, size, size, cin), dtype=np.float32))
    w = jax.numpy.asarray(rng.standard_normal((k, k, cin, cout), dtype=np.float32) * 0.05)
    conv = lambda x, w, stride=stride, pad=k // 2: jax.lax.conv_general_dilated(
        x, w, (stride, stride), ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    dy = jax.numpy.asarray(rng.standard_normal(conv(x[:1], w).shape[1:], dtype=np.float32))
    dy = jax.numpy.broadcast_to(dy, (IMAGES,) + dy.shape) + 0.0
    fns = {
        "forward": (jax.jit(conv), (x, w)),
        "input_gradient": (jax.jit(lambda x, w, dy, conv=conv: jax.vjp(
            lambda x: conv(x, w), x)[1](dy)[0]), (x, w, dy)),
        "weight_gradient": (jax.jit(lambda x, w, dy, conv=conv: jax.vjp(
            lambda w: conv(x, w), w)[1](dy)[0]), (x, w, dy)),
    }
    for kind, (f, a) in fns.items():
      out[f"{name} | {kind}"] = lambda f=f, a=a: jax.block_until_ready(f(*a))
  return out


def torch_ops(threads: int) -> dict:
  """The same ops in torch (NCHW), without autograd's bookkeeping."""
  import torch
  import torch.nn.functional as F

  torch.manual_seed(0)
  torch.set_num_threads(threads)
  out = {}
  for name, cin, cout, k, stride, size, _ in CONVS:
    x = torch.randn(IMAGES, cin, size, size)
    w = torch.randn(cout, cin, k, k) * 0.05
    pad = k // 2
    with torch.no_grad():
      dy = torch.randn_like(F.conv2d(x, w, stride=stride, padding=pad))

    def backward(mask, x=x, w=w, dy=dy, stride=stride, pad=pad):
      def run():
        with torch.no_grad():
          torch.ops.aten.convolution_backward(dy, x, w, None, (stride, stride), (pad, pad),
                                              (1, 1), False, (0, 0), 1, mask)
      return run

    def forward(x=x, w=w, stride=stride, pad=pad):
      with torch.no_grad():
        F.conv2d(x, w, stride=stride, padding=pad)
    out[f"{name} | forward"] = forward
    out[f"{name} | input_gradient"] = backward((True, False, False))
    out[f"{name} | weight_gradient"] = backward((False, True, False))
  return out


def table(parts: dict) -> dict:
  """peer.time_parts' {op: {jax_ms, torch_ms, ratio}} scaled by each shape's count, with
  totals per kind and overall: {'ops': {...}, 'totals': {kind: {jax_ms, torch_ms, ratio}}}."""
  count = {name: c for name, *_, c in CONVS}
  ops, totals = {}, {kind: [0.0, 0.0] for kind in KINDS + ("all",)}
  for op, row in parts.items():
    name, kind = op.split(" | ")
    j, t = row["jax_ms"] * count[name], row["torch_ms"] * count[name]
    ops[op] = {"count": count[name], "jax_ms": j, "torch_ms": t, "ratio_jax_to_torch": t / j}
    for key in (kind, "all"):
      totals[key][0] += j
      totals[key][1] += t
  return {"ops": ops, "totals": {k: {"jax_ms": j, "torch_ms": t, "ratio_jax_to_torch": t / j}
                                 for k, (j, t) in totals.items()}}


def markdown(r: dict) -> str:
  lines = [f"# ResNet-18's convolutions, op by op (`{r['command']}`)", "", r["environment"], "",
           f"Batch {IMAGES}, 32 x 32 images, float32; ms of all the network's convolutions of "
           "that shape (one op's median round x count). jax / torch: torch ms over jax ms "
           "(below 1: jax is slower).", "",
           "| convolution | op | count | jax ms | torch ms | jax / torch |",
           "|---|---|---:|---:|---:|---:|"]
  for op, row in r["ops"].items():
    name, kind = op.split(" | ")
    lines.append(f"| {name} | {kind} | {row['count']} | {row['jax_ms']:.1f} | "
                 f"{row['torch_ms']:.1f} | {row['ratio_jax_to_torch']:.2f} |")
  lines += ["", "| all convolutions | jax ms | torch ms | jax / torch |", "|---|---:|---:|---:|"]
  for kind, row in r["totals"].items():
    lines.append(f"| {kind} | {row['jax_ms']:.0f} | {row['torch_ms']:.0f} | "
                 f"{row['ratio_jax_to_torch']:.2f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  from benchmarks import peer
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--reps", type=int, default=2, help="Timed calls per op per round.")
  ap.add_argument("--threads", type=int, default=0, help="Threads per side (0: one per core).")
  ap.add_argument("--xla_flags", default="", help="XLA_FLAGS of the jax worker.")
  ap.add_argument("--out", default="benchmarks/results/peer_ops_cpu")
  args = ap.parse_args(argv)
  if missing := peer.missing_peer():
    print(f"benchmarks.peer_ops: skipped: {', '.join(missing)} not installed "
          f"(pip install \".[peer]\")")
    return
  import jax
  import torch
  from ssl_jax import devices, storage
  cpus = os.sched_getaffinity(0)
  threads = args.threads or len(cpus)
  parts = peer.time_parts(threads, cpus, args.rounds, args.reps, args.xla_flags,
                          sides=("jax_ops", "torch_ops"), names=_names())
  results = {"command": " ".join(["python -m benchmarks.peer_ops"] + sys.argv[1:]),
             "environment": f"jax {jax.__version__}, torch {torch.__version__}, "
                            f"{devices.processor_name()}, {len(cpus)} cores, {threads} threads "
                            "per side, " + (f"XLA_FLAGS={args.xla_flags!r}, "
                                            if args.xla_flags else "")
                            + datetime.date.today().isoformat(),
             **table(parts)}
  storage.write_json_atomic(args.out + ".json", results)
  storage.write_text_atomic(args.out + ".md", markdown(results))
  print(markdown(results))


if __name__ == "__main__":
  main()

"""Defaults shared by every config: the method of METHOD.md on CIFAR-10, ResNet-18.

Other configs import this and override a few fields. Every field can be
overridden on the command line, e.g. `--config.loss.kl_weight=0.5`.
"""

import os

import ml_collections

from ssl_jax import methods

# The shared CIFAR-10 JPEG archive beside a checkout of this repository.
SHARED_CIFAR10 = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
    "cifar10-jpeg.tar.gz"))

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def cifar10_source() -> tuple[str, str]:
  """(source, reason): the shared archive when present, else TFDS cifar10."""
  if os.path.exists(SHARED_CIFAR10):
    return f"folder:{SHARED_CIFAR10}", "the shared CIFAR-10 JPEG archive exists"
  return "tfds:cifar10", f"{SHARED_CIFAR10} not found, so TFDS cifar10 (downloads once)"


def set_method(config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
  """Sets config.method and the fields that define it (the rest stays shared).

  Each method's registry entry says which fields those are
  (`ssl_jax/methods/`, its `configure`): `ours` keeps these defaults (METHOD.md);
  the baselines set their bank, loss and head choices.
  """
  methods.get(method).configure(config)   # ValueError naming the registered methods
  config.method = method
  return config


def get_config(method: str = "ours") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.method = method

  config.data = ml_collections.ConfigDict()
  source, reason = cifar10_source()
  config.data.source = source
  # Why data.source is what it is; it explains data.source_chosen, so a config
  # or command line that sets another source is not given this reason.
  config.data.source_reason = reason
  config.data.source_chosen = source
  config.data.train_split = "train"
  config.data.test_split = "test"
  config.data.image_size = 32
  config.data.mean = CIFAR_MEAN
  config.data.std = CIFAR_STD
  config.data.fraction = 1.0        # fixed seeded subset of the training split
  config.data.test_fraction = 1.0   # of the test split, for quick CPU runs only
  config.data.subset_seed = 0
  # A class-balanced fraction of the (labelled) training split, drawn with config.seed:
  # the subset the evaluation's label fraction of that seed uses (fine-tuning on 1%).
  config.data.label_fraction = 1.0
  # Contiguous data shards, each with its own per-epoch order (0: one per
  # process). It fixes the data order: a 1-process run with shards=2 sees the
  # global batches of a 2-process run.
  config.data.shards = 0
  # Keep the decoded training split on every device and gather each batch
  # there: no per-step host work (needs each process's rows to fit on a device).
  config.data.on_device = False
  config.data.cache_dir = "~/.cache/ssl_jax"  # decoded folder sources ("" to disable)
  config.data.skip_corrupt = False
  config.data.tfds_data_dir = ""
  # Streaming input (ssl_jax/stream.py): records read and decoded per step by
  # Grain's workers instead of a split decoded into memory; for ImageNet scale.
  config.data.stream = False
  config.data.workers = 0            # Grain worker processes (0: threads of this process; -1: one per core)
  # How the host makes a streamed view (ssl_jax/decoders.py): "pillow" decodes and
  # resizes the crop; "simplejpeg" decodes (libjpeg-turbo) and sends the crop's window,
  # which the device resizes: 2x the images per core at 224 px, 4x the bytes sent.
  config.data.decoder = "pillow"
  config.data.prefetch = 2           # batches sent to the devices ahead of the step (>= 1)

  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet18"
  config.model.stem = "cifar"
  config.model.width = 1.0
  config.model.embed_dim = 128
  config.model.dtype = "float32"    # "bfloat16": bf16 compute, float32 params, bank and loss
  config.model.head = "linear"      # projection P: "linear" (METHOD.md) or "mlp"
  config.model.head_hidden = 2048   # hidden width of an MLP head (and of BYOL's predictor)
  # ViT only (each backbone reads its own fields, README "Add a backbone"):
  config.model.patch_size = 4       # pixels per patch side: 4 for 32 px images, 16 for 224 px
  config.model.pool = "cls"         # h: the class token's output, or "gap" (mean of the patches)

  config.loss = ml_collections.ConfigDict()
  config.loss.temperature = 0.1
  config.loss.kl_weight = 1.0       # lambda; 0 disables SqrtKL
  config.loss.kl_direction = "q_p"  # KL(q || p); "p_q" for KL(p || q)
  config.loss.kl_stop_gradient = True

  config.bank = ml_collections.ConfigDict()
  config.bank.init = "calibrated"   # or "random"
  config.bank.calibrate_bn = "batch"  # BatchNorm mode of the calibration pass
  config.bank.update_rule = "grad"       # or "momentum"
  # eta_V of V' = normalize(V - eta_V dL/dV). A positive row's gradient is about
  # (1 - p) z / (B tau), so eta_V = B * tau / 2 moves it like momentum 0.5 does.
  config.bank.lr = 0.5 * 512 * 0.1
  config.bank.momentum = 0.5
  # Bank rows split across devices (memory N d / devices each); checkpoints
  # hold the whole bank either way. See ssl_jax/sharded_bank.py.
  config.bank.sharded = False
  # With more than one device, a bank of more rows than this is sharded even when
  # bank.sharded is False (the run says so): above it the replicated bank's
  # per-step all-reduce (N x d x 4 bytes) outgrows ResNet-50's gradient
  # all-reduce (102 MB). 0: never automatically.
  config.bank.shard_above = 200_000
  # Loss, its gradient and the bank update from one softmax pass instead of
  # autodiff through the loss: same values up to float rounding, fewer [B, N]
  # temporaries (benchmarks/run.py, bank part). Off by default so the
  # committed CPU results rerun bit for bit; configs/cifar10.py turns it on.
  config.bank.fused = False
  # Go over the bank in chunks of this many rows (two passes, `ssl_jax/chunked_bank.py`):
  # no [B, N] logits, for banks larger than device memory allows; 0: all rows at once.
  config.bank.chunk_rows = 0
  # How the bank is stored: "bfloat16" halves its memory and checkpoint; logits
  # still accumulate in float32 and each update is computed in float32, then
  # rounded (experiments/bank_dtype measured what that costs).
  config.bank.dtype = "float32"

  # Baselines (used when config.method is "simclr" or "byol").
  config.simclr = ml_collections.ConfigDict()
  config.simclr.temperature = 0.2   # solo-learn's CIFAR value
  config.byol = ml_collections.ConfigDict()
  config.byol.target_decay = 0.99   # EMA decay at step 0, cosine to 1 at the end

  config.augment = ml_collections.ConfigDict()
  config.augment.on_device = True
  config.augment.crop_scale = (0.2, 1.0)
  config.augment.flip = True
  config.augment.jitter = (0.4, 0.4, 0.4, 0.1)
  config.augment.jitter_prob = 0.8
  config.augment.gray_prob = 0.2
  config.augment.blur_prob = 0.0    # 0.5 for large images (STL-10, ImageNet)

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "sgd"         # or "lars"
  config.optim.base_lr = 0.03       # scaled by batch_size / 256
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.warmup_epochs = 5

  config.batch_size = 512
  config.num_epochs = 200
  # > 0: a FLOP budget instead: the run takes as many whole epochs as fit it,
  # with every schedule planned over them (ssl_jax/compute.py).
  config.train_flops = 0.0

  config.eval = ml_collections.ConfigDict()
  config.eval.every_epochs = 10     # kNN during training; 0 for only at the end
  config.eval.batch_size = 1024
  # kNN against: "embed" (the training split embedded again by the current network)
  # or "bank" (the bank rows as the training embeddings: no pass over the
  # training images; bank methods only), also for the untrained network's kNN
  # before step 1. The final evaluation reports both.
  config.eval.knn_source = "embed"
  # How kNN and the linear probe store the training features on the devices
  # (split by rows over all of them): "float32", or "bfloat16" to halve them.
  config.eval.feature_dtype = "float32"
  # Bank methods: at each evaluation, the cosine of this many seeded training
  # images' bank rows with their fresh embeddings, and the bank's effective
  # rank (ssl_jax/evaluate/freshness.py); 0 turns it off.
  config.eval.freshness_probe = 1024
  config.eval.knn_k = 200
  config.eval.knn_temperature = 0.1
  config.eval.linear_epochs = 100
  config.eval.linear_batch_size = 256
  config.eval.linear_lr = 1e-3
  config.eval.linear_weight_decay = 5e-6
  # Few labels, at the final evaluation (ssl_jax/evaluate/lowshot.py): kNN and
  # the probe also fit on class-balanced subsets, e.g. (0.01, 0.1) of the
  # labels or (1, 5, 10) per class, each drawn with lowshot_seeds seeds.
  config.eval.label_fractions = ()
  config.eval.shots_per_class = ()
  config.eval.lowshot_seeds = 3

  config.log_every_steps = 50
  config.checkpoint_every_epochs = 1
  config.checkpoint_every_steps = 0   # also every this many steps (0: only at epoch ends)
  config.keep_checkpoints = 3
  # A training workdir or export whose encoder backbone (parameters and BatchNorm
  # statistics) this run starts from, heads fresh (ssl_jax/warm_start.py); "": none.
  config.init_from = ""
  # How the step is mapped onto the devices (ssl_jax/mapping.py): "mesh", jax.jit over
  # shard_map on one mesh of every device of every process, or "pmap".
  # benchmarks/loop_overhead.py measured both.
  config.parallel = "mesh"
  # With several processes they agree on a SIGTERM every this many steps (and at
  # each epoch's end), reading one flag on the host: between checks nothing
  # waits for the devices, so steps stay in flight. A stop lands within this
  # many steps of the signal.
  config.preemption_check_steps = 10
  # JAX's persistent compilation cache: "workdir" (<workdir>/compilation_cache),
  # a folder (local or gs://) shared by runs, or "" (off). A restart reads the
  # compiled programs back (ssl_jax/compile_cache.py).
  config.compilation_cache_dir = "workdir"
  # (START, COUNT): a jax.profiler trace of the COUNT steps after step START in
  # <workdir>/profile/ (ssl_jax/profiling.py); () for none.
  config.profile_steps = ()
  return set_method(config, method)

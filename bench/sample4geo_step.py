"""Benchmark: one Sample4Geo training step, cvm (Keras 3 / TF, as `cvm train` runs it) against the authors' PyTorch.

cvm (`cvm`, `cvm_xla`): `Sample4Geo` (one shared ConvNeXt) in `RetrievalTrainer` with the loss `cvm train` builds
for it (`cvm.training.loop.build_loss`: `SymmetricInfoNCE`, label smoothing 0.1, bound to the model's learnable
`logit_scale`) and the optimizer of `--optimizer adamw --weight_decay 0.01 --clip_grad_value 100`
(`cvm.training.optimizers.make_optimizer`: `FusedAdamW`, clipping by value after the gradients are summed). The
step is `trainer.train_step` under the default strategy, wrapped as `Run._make_step_fn` wraps it: an outer
tf.function around `strategy.run`, and for `cvm_xla` an inner `tf.function(jit_compile=True)` (`cvm train` picks
one of the two per machine, cvm.training.jit_choice). Inputs arrive already normalised (as Sample4Geo's data loader
gives them; `cvm train`'s in-step uint8 normalisation is left out so that both sides compute the same thing).

PyTorch (`torch`): Sample4Geo's `TimmModel` (a timm ConvNeXt with num_classes=0 - `timm.create_model` for a
released variant - plus a `logit_scale` parameter at log(1/0.07)), their `InfoNCE` (F.normalize both,
`logit_scale.exp() * f1 @ f2.T`, `CrossEntropyLoss(label_smoothing=0.1)` on rows and columns, averaged) and their
training step (sample4geo/trainer.py, fp32): forward both views, loss, backward, `clip_grad_value_(params, 100)`,
`torch.optim.AdamW(lr=1e-3)` (torch's defaults: weight decay 0.01, every parameter decayed) `.step()`,
`zero_grad()`. Restated here; the authors' code is not imported. `torch_compile`: the same with the model wrapped in
`torch.compile` (inductor, CPU). `torch_passive`: the eager step in a process with OMP_WAIT_POLICY=PASSIVE (torch's
OpenMP threads sleep at once instead of spinning when they wait; see below).

Same computation: the timm model's weights (randomised as tests/timm_import.py does, so that every layer shows)
are copied into the cvm model by cvm's converter (`cvm.export.torch_sample4geo.load_sample4geo_state`), both take
the same batch (NCHW / NHWC copies of one random array) and run in float32. Before timing, each variant runs two
steps from that common state and the script prints the first loss, the second loss (computed at the updated
weights) and how far each weight update after one step is from torch's; every variant is then reset to it.

Processes and threads: each framework runs in its own worker process (spawned; TF is never imported beside torch),
driven by this one, which imports neither: a worker is idle (blocked on its pipe) while the other is timed. TF's
intra-op and inter-op pools and torch's intra-op (OpenMP, libgomp) and inter-op pools are set to `--threads`
(default: the usable cores, which is what both use by default). On a shared, overloaded CPU, torch's eager step
degrades far more than TF's: every op ends in an OpenMP barrier, and when one of its threads is descheduled by
another job the others wait for it (spinning, by libgomp's default policy), per op; TF's work-stealing pool lets
the running threads take the work. `torch_passive` shows how much of torch's time that is.

Protocol: `--warmup` untimed steps per variant (tracing, XLA / inductor compilation), then `--repeats` rounds of
`--steps` steps of every variant, interleaved in a rotating order so that the load of a shared machine hits all
alike. Reported: median seconds per step over the rounds, min-max, pairs/s, the worker's CPU seconds per step
(all its threads), and torch / cvm (> 1: cvm is faster) of the medians, its range over the rounds, and of the
minima (the least disturbed round of each). `--breakdown` then times the parts on both sides, the same way:
forward with the loss; forward + backward; the optimizer alone on one step's gradients (clipping, AdamW, torch's
zero_grad); the whole step. The load average and the CPU are printed with the figures.
Target (issue 13): cvm >= 1.0x torch on this CPU with the same backbone.

  python bench/sample4geo_step.py [--backbone convnext_tiny] [--width 1.0] [--depths 3,3,9,3] [--batch 8]
      [--ground 64,256] [--aerial 128,128] [--warmup 2] [--steps 2] [--repeats 5] [--threads N]
      [--variants cvm,cvm_xla,torch,torch_passive] [--breakdown] [--breakdown_torch torch_passive] [--nocheck]
  # also: --variants ...,torch_compile; the paper's shapes: --ground 140,768 --aerial 384,384 --batch 2
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

LR, WEIGHT_DECAY, CLIP_VALUE, LABEL_SMOOTHING = 1e-3, 0.01, 100.0, 0.1
# (depths, dims) of the ConvNeXt variants at width 1, as cvm.models.backbones.convnext.VARIANTS and timm (restated:
# importing cvm's module imports Keras, hence TF, which neither this process nor the torch worker should load).
CONVNEXT = {
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
}
# variant -> the worker process that runs it
VARIANTS = {"cvm": "cvm", "cvm_xla": "cvm", "torch": "torch", "torch_compile": "torch",
            "torch_passive": "torch_passive"}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        return platform.processor() or "unknown CPU"


def cpu_details() -> str:
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    key, value = (s.strip() for s in line.split(":", 1))
                    fields.setdefault(key, value)
    except OSError:
        pass
    avx512 = "avx512f" in fields.get("flags", "").split()
    family, model = fields.get("cpu family", "?"), fields.get("model", "?")
    return f"family {family} model {model}, AVX-512 {'yes' if avx512 else 'no'}"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def make_batch(batch, ground_hw, aerial_hw, seed=0):
    """(ground [B, Hg, Wg, 3], aerial [B, Ha, Wa, 3]) float32, ImageNet-normalised-like; the same in every worker."""
    rng = np.random.default_rng(seed)
    ground = rng.standard_normal((batch, *ground_hw, 3)).astype("float32")
    aerial = rng.standard_normal((batch, *aerial_hw, 3)).astype("float32")
    return ground, aerial


# --- PyTorch: Sample4Geo's model, loss and step ----------------------------------------------------------------
def timm_convnext(backbone, depths, dims, seed):
    """The timm ConvNeXt (num_classes=0) of Sample4Geo, every tensor drawn as tests/timm_import.py draws them."""
    import torch
    from tests.timm_import import import_timm_convnext

    timm_convnext_module = import_timm_convnext()  # timm, importable although torchvision's C ops do not load
    if (depths, dims) == CONVNEXT[backbone]:
        import timm

        model = timm.create_model(backbone, pretrained=False, num_classes=0)  # as TimmModel, without the download
    else:
        model = timm_convnext_module.ConvNeXt(depths=depths, dims=dims, num_classes=0)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(0.5 + 0.5 * torch.rand_like(p))
            elif p.ndim >= 2:
                p.copy_(torch.randn_like(p) / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model


class TorchSide:
    """Sample4Geo's TimmModel + InfoNCE + AdamW + clip_grad_value_, one training step per call."""

    def __init__(self, backbone, depths, dims, batch_arrays, seed=0):
        import torch

        F = torch.nn.functional

        class TimmModel(torch.nn.Module):  # sample4geo/model.py
            def __init__(self, model):
                super().__init__()
                self.model = model
                self.logit_scale = torch.nn.Parameter(torch.ones([]) * np.log(1 / 0.07))

            def forward(self, img1, img2):
                return self.model(img1), self.model(img2)

        class InfoNCE(torch.nn.Module):  # sample4geo/loss.py
            def __init__(self, loss_function):
                super().__init__()
                self.loss_function = loss_function

            def forward(self, image_features1, image_features2, logit_scale):
                image_features1 = F.normalize(image_features1, dim=-1)
                image_features2 = F.normalize(image_features2, dim=-1)
                logits_per_image1 = logit_scale * image_features1 @ image_features2.T
                logits_per_image2 = logits_per_image1.T
                labels = torch.arange(len(logits_per_image1), dtype=torch.long)
                return (self.loss_function(logits_per_image1, labels)
                        + self.loss_function(logits_per_image2, labels)) / 2

        self.torch = torch
        self.model = TimmModel(timm_convnext(backbone, depths, dims, seed)).train()
        self.loss_function = InfoNCE(torch.nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING))
        self.initial = copy.deepcopy(self.model.state_dict())
        self.reset()
        self.forward = self.model
        ground, aerial = batch_arrays  # Sample4Geo: query = ground, reference = aerial; NCHW
        self.batch = tuple(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous() for x in (ground, aerial))

    def reset(self):
        """Back to the initial weights, with a fresh AdamW (no moments, step 0)."""
        self.model.load_state_dict(self.initial)
        self.optimizer = self.torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        self.optimizer.zero_grad()

    def loss(self, query, reference):
        features1, features2 = self.forward(query, reference)
        return self.loss_function(features1, features2, self.model.logit_scale.exp())

    def step(self):  # sample4geo/trainer.py, train(), fp32 branch
        loss = self.loss(*self.batch)
        value = loss.item()
        loss.backward()
        self.torch.nn.utils.clip_grad_value_(self.model.parameters(), CLIP_VALUE)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return value

    def forward_only(self):  # forward with autograd recording, as in training
        return self.loss(*self.batch).item()

    def forward_backward(self):
        loss = self.loss(*self.batch)
        loss.backward()
        self.optimizer.zero_grad()
        return loss.item()

    def update_only(self):
        """clip_grad_value_ + AdamW.step + zero_grad on one step's gradients (kept from the first call)."""
        params = list(self.model.parameters())
        if not hasattr(self, "_grads"):
            self.loss(*self.batch).backward()
            self._grads = [p.grad for p in params]
        for p, g in zip(params, self._grads):
            p.grad = g
        self.torch.nn.utils.clip_grad_value_(params, CLIP_VALUE)
        self.optimizer.step()
        self.optimizer.zero_grad()

    def state(self) -> dict:
        return {k: v.detach().numpy().copy() for k, v in self.model.state_dict().items()}


# --- cvm: the step `cvm train` runs ---------------------------------------------------------------------------
class CvmSide:
    """Sample4Geo + RetrievalTrainer + make_optimizer (adamw, clip 100), steps wrapped as Run._make_step_fn."""

    def __init__(self, backbone, width, depths, torch_state: dict, batch_arrays):
        import tensorflow as tf

        from cvm.export.torch_sample4geo import load_sample4geo_state, timm_convnext_targets
        from cvm.models.sample4geo import Sample4Geo
        from cvm.training.jit_choice import state_variables
        from cvm.training.loop import build_loss
        from cvm.training.optimizers import make_optimizer
        from cvm.training.retrieval import RetrievalTrainer

        self.tf = tf
        self.encoder = Sample4Geo(backbone=backbone, backbone_width=width,
                                  backbone_depths=None if depths == CONVNEXT[backbone][0] else depths)
        load_sample4geo_state(self.encoder, torch_state, "the timm model")  # cvm's converter, strict
        config = types.SimpleNamespace(  # the TrainConfig fields build_loss / make_optimizer read
            lr=LR, lr_schedule="constant", warmup_epochs=0, epochs=1, optimizer="adamw", weight_decay=WEIGHT_DECAY,
            clip_grad_value=CLIP_VALUE, infonce_smoothing=LABEL_SMOOTHING, mask_radius_m=None, dataset="cvusa")
        self.strategy = tf.distribute.get_strategy()  # --strategy default
        with self.strategy.scope():
            self.trainer = RetrievalTrainer(self.encoder, build_loss(config, self.encoder, "metres"))
            self.trainer.compile(optimizer=make_optimizer(config), jit_compile=False)  # as Run._compile
            self.optimizer = self.trainer.optimizer
            self.optimizer.build(self.encoder.trainable_variables)
        self.targets = timm_convnext_targets(self.encoder.ground_backbone, prefix="model.")
        self.targets["logit_scale"] = (self.encoder.logit_scale, None)
        self.variables = state_variables(self.encoder, self.trainer, self.optimizer)
        self.initial = [v.numpy().copy() for v in self.variables]
        ground, aerial = batch_arrays
        self.batch = ({"ground": tf.constant(ground), "aerial": tf.constant(aerial)}, {})
        self.steps = {False: self._step_fn(False), True: self._step_fn(True)}

    def _step_fn(self, jit_compile):
        """Run._make_step_fn: strategy.run of trainer.train_step in a tf.function (XLA inside when asked)."""
        tf, trainer, strategy = self.tf, self.trainer, self.strategy
        step = trainer.train_step
        if jit_compile:
            step = tf.function(step, jit_compile=True, reduce_retracing=True)

        @tf.function(reduce_retracing=True)
        def distributed_step(batch):
            out = strategy.run(step, args=(batch,))
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, out["loss"], axis=None)

        return distributed_step

    def reset(self):
        for variable, value in zip(self.variables, self.initial):
            variable.assign(value)

    def step(self, jit_compile=False):
        return float(self.steps[jit_compile](self.batch))

    def state(self) -> dict:
        """The trained weights in PyTorch's layout and names (for the equivalence check)."""
        from cvm.export.torch_sample4geo import to_torch

        return {k: to_torch(v.numpy(), layout) for k, (v, layout) in self.targets.items()}

    def parts(self, jit_compile=False):
        """Callables timing the parts on the trainer's own code: forward + loss; forward + loss + gradients; the
        optimizer update (clipping + FusedAdamW) alone on one step's gradients."""
        tf, trainer = self.tf, self.trainer

        def forward(data):
            features, meta = data
            return trainer.global_loss(trainer.encoder(features, training=True), meta)

        def forward_backward(data):
            features, meta = data
            with tf.GradientTape() as tape:
                loss = trainer.global_loss(trainer.encoder(features, training=True), meta)
            grads = tape.gradient(loss, trainer.encoder.trainable_variables)
            return loss, grads  # returned so that nothing is pruned

        fns = [tf.function(f, jit_compile=jit_compile) for f in (forward, forward_backward)]
        variables = trainer.encoder.trainable_variables
        grads = fns[1](self.batch)[1]  # one step's gradients, kept for the optimizer-only part

        @tf.function(jit_compile=jit_compile)
        def update():  # what train_step does after tape.gradient: clip by value + FusedAdamW
            trainer.optimizer.apply(grads, variables)
            return trainer.optimizer.iterations

        return (lambda: float(fns[0](self.batch)), lambda: float(fns[1](self.batch)[0]),
                lambda: int(update()))


# --- the worker processes -------------------------------------------------------------------------------------
def _check(side, fns, name):
    """Two steps of `name` from the initial state: (first loss, second loss, state after one), state reset."""
    side.reset()
    loss1 = fns[name]()
    after = side.state()
    loss2 = fns[name]()
    side.reset()
    return loss1, loss2, after


def _torch_worker(conn, opts, variants):
    import torch

    torch.set_num_threads(opts["threads"])
    torch.set_num_interop_threads(opts["threads"])
    side = TorchSide(opts["backbone"], opts["depths"], opts["dims"], make_batch(*opts["batch"]))
    forwards = {"torch": side.model, "torch_passive": side.model}
    if "torch_compile" in variants:
        forwards["torch_compile"] = torch.compile(side.model)  # the same parameters as the eager model

    def variant(name):
        def run():
            side.forward = forwards[name]
            return side.step()
        return run

    fns = {name: variant(name) for name in variants}

    check = functools.partial(_check, side, fns)

    def breakdown():
        side.forward = side.model
        prefix = variants[0]
        fns.update({f"{prefix} fwd": side.forward_only, f"{prefix} fwd+bwd": side.forward_backward,
                    f"{prefix} optimizer": side.update_only, f"{prefix} step": side.step})
        return [f"{prefix} {p}" for p in ("fwd", "fwd+bwd", "optimizer", "step")]

    info = (f"torch {torch.__version__}: {torch.get_num_threads()} threads, "
            f"inter-op {torch.get_num_interop_threads()}, "
            f"{torch.__config__.parallel_info().splitlines()[-1].strip()}, OMP_WAIT_POLICY "
            f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; TF loaded: {'tensorflow' in sys.modules}")
    return info, side.state(), fns, check, side.reset, breakdown


def _cvm_worker(conn, opts, variants, initial):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(opts["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(opts["threads"])
    side = CvmSide(opts["backbone"], opts["width"], opts["depths"], initial, make_batch(*opts["batch"]))
    fns = {name: (lambda jit=(name == "cvm_xla"): side.step(jit)) for name in variants}

    check = functools.partial(_check, side, fns)

    def breakdown(xla=False):
        names = []
        for jit in ([False, True] if xla else [False]):
            prefix = "cvm xla" if jit else "cvm"
            fwd, fwd_bwd, update = side.parts(jit)
            fns.update({f"{prefix} fwd": fwd, f"{prefix} fwd+bwd": fwd_bwd, f"{prefix} optimizer": update,
                        f"{prefix} step": (lambda j=jit: side.step(j))})
            names += [f"{prefix} {p}" for p in ("fwd", "fwd+bwd", "optimizer", "step")]
        return names

    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default: on")
    info = (f"TF {tf.__version__}: intra-op {tf.config.threading.get_intra_op_parallelism_threads()}, inter-op "
            f"{tf.config.threading.get_inter_op_parallelism_threads()} threads, oneDNN {onednn}, no OpenMP; torch "
            f"loaded: {'torch' in sys.modules}")
    return info, None, fns, check, side.reset, breakdown


def worker(kind, conn, opts, variants):
    """A worker process: builds its side, then answers the driver's commands until 'stop'."""
    try:
        if kind == "cvm":
            (initial,) = conn.recv()
            info, state, fns, check, reset, breakdown = _cvm_worker(conn, opts, variants, initial)
        else:
            info, state, fns, check, reset, breakdown = _torch_worker(conn, opts, variants)
        conn.send(("ok", (info, state)))
        while True:
            command, *args = conn.recv()
            if command == "stop":
                return
            if command == "check":
                start = time.perf_counter()
                loss1, loss2, after = check(args[0])
                result = (loss1, loss2, after, time.perf_counter() - start)
            elif command == "reset":
                result = reset()
            elif command == "breakdown":
                names = breakdown(*args)
                for name in names:  # traced / compiled here, untimed
                    fns[name]()
                result = names
            elif command == "time":
                name, steps = args
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(steps):
                    fns[name]()
                result = ((time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps)
            else:
                raise ValueError(f"unknown command {command!r}")
            conn.send(("ok", result))
    except Exception:
        conn.send(("error", traceback.format_exc()))


class Worker:
    def __init__(self, kind, opts, variants, env):
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # the spawned process inherits the environment as it is now
        try:
            self.conn, child = multiprocessing.Pipe()
            self.process = multiprocessing.get_context("spawn").Process(
                target=worker, args=(kind, child, opts, variants), daemon=True)
            self.process.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def send(self, *message):
        self.conn.send(message)

    def result(self):
        status, value = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"worker failed:\n{value}")
        return value

    def call(self, *message):
        self.send(*message)
        return self.result()

    def stop(self):
        try:
            self.send("stop")
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=30)


# --- equivalence check ----------------------------------------------------------------------------------------
def compare_updates(before: dict, after_ref: dict, after: dict) -> dict:
    """How far `after` - `before` is from `after_ref` - `before` (the reference update), over every tensor."""
    ref = np.concatenate([(after_ref[k] - before[k]).ravel() for k in before]).astype(np.float64)
    ours = np.concatenate([(after[k] - before[k]).ravel() for k in before]).astype(np.float64)
    diff = np.abs(ours - ref)
    return {"rel_l2": float(np.linalg.norm(ours - ref) / np.linalg.norm(ref)),
            "max_over_lr": float(diff.max() / LR),
            "frac_off": float(np.mean(diff > 0.1 * LR)),  # elements whose update differs by > 10 % of lr
            "n": int(ref.size),
            "logit_scale": (float(after["logit_scale"] - before["logit_scale"]),
                            float(after_ref["logit_scale"] - before["logit_scale"]))}


def check(workers, variants, before):
    """Two steps of every variant from the common state: losses and the first update against torch's."""
    results = {name: workers[VARIANTS[name]].call("check", name) for name in variants}
    ref_name = next(n for n in ("torch", "torch_passive", "torch_compile") if n in results)
    ref = results[ref_name]
    print(f"equivalence check (two steps from the same weights and batch; reference: {ref_name}):")
    for name in variants:
        loss1, loss2, after, seconds = results[name]
        line = (f"  {name:<14} loss step 1 {loss1:.6f} (diff {loss1 - ref[0]:+.1e}), step 2 {loss2:.6f} "
                f"(diff {loss2 - ref[1]:+.1e})")
        if name != ref_name:
            c = compare_updates(before, ref[2], after)
            line += (f"; update after step 1 vs {ref_name}: rel. L2 {c['rel_l2']:.1e}, max |diff| "
                     f"{c['max_over_lr']:.2f} lr, {100 * c['frac_off']:.3f} % of {c['n']:,} elements off by > 0.1 lr;"
                     f" logit_scale {c['logit_scale'][0]:+.6f} vs {c['logit_scale'][1]:+.6f}")
        print(line + f"  [{seconds:.1f} s incl. tracing]", flush=True)


# --- timing ---------------------------------------------------------------------------------------------------
def interleaved(workers, names, owner, repeats: int, steps: int) -> dict:
    """{name: [(wall s/step, worker CPU s/step) per round]}: rounds of `steps` calls of each, rotating the order."""
    out = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            out[name].append(workers[owner(name)].call("time", name, steps))
    return out


def report(times: dict, batch: int, baseline=None):
    width = max(18, 2 + max(len(n) for n in times))
    print(f"{'variant':<{width}}{'s/step':>8}{'min':>8}{'max':>8}{'pairs/s':>9}{'CPU s/step':>12}"
          + (f"{baseline + '/cvm':>18}{'per round':>13}{'of minima':>11}" if baseline else ""))
    for name, rounds in times.items():
        wall = [w for w, _ in rounds]
        cpu = [c for _, c in rounds]
        median = statistics.median(wall)
        line = (f"{name:<{width}}{median:>8.3f}{min(wall):>8.3f}{max(wall):>8.3f}{batch / median:>9.2f}"
                f"{statistics.median(cpu):>12.3f}")
        if baseline in times and name.startswith("cvm"):
            base = [w for w, _ in times[baseline]]
            per_round = [b / w for b, w in zip(base, wall)]
            line += (f"{statistics.median(base) / median:>17.2f}x{min(per_round):>8.2f}-{max(per_round):.2f}x"
                     f"{min(base) / min(wall):>10.2f}x")
        print(line, flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="convnext_tiny", choices=("convnext_tiny", "convnext_small",
                                                                         "convnext_base"))
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier of the variant's widths")
    parser.add_argument("--depths", default=None, help="blocks per stage, e.g. 1,1,3,1 (default: the variant's)")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step")
    parser.add_argument("--ground", default="64,256")
    parser.add_argument("--aerial", default="128,128")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (blocks per variant)")
    parser.add_argument("--threads", type=int, default=None, help="TF intra/inter-op and torch threads "
                                                                   "(default: the usable cores)")
    parser.add_argument("--variants", default="cvm,cvm_xla,torch,torch_passive")
    parser.add_argument("--breakdown", action="store_true", help="also time forward / backward / optimizer / step")
    parser.add_argument("--breakdown_torch", default=None, help="the torch variant of the breakdown (default: the "
                                                                 "first torch variant)")
    parser.add_argument("--breakdown_xla", action="store_true", help="the breakdown also of cvm's XLA step")
    parser.add_argument("--nocheck", action="store_true", help="skip the equivalence check")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    depths, dims = CONVNEXT[args.backbone]
    if args.depths is not None:
        depths = tuple(int(d) for d in args.depths.split(","))
    dims = tuple(max(1, int(round(d * args.width))) for d in dims)  # as cvm's variant_config
    ground_hw = tuple(int(s) for s in args.ground.split(","))
    aerial_hw = tuple(int(s) for s in args.aerial.split(","))
    opts = dict(backbone=args.backbone, width=args.width, depths=depths, dims=dims,
                threads=args.threads or usable_cores(), batch=(args.batch, ground_hw, aerial_hw))

    print(f"CPU: {cpu_model()} ({cpu_details()}), {usable_cores()} usable cores; load average at start "
          f"{load_average()}")
    print(f"{args.backbone} depths {depths} widths {dims}; batch {args.batch} pairs, ground {ground_hw}, "
          f"aerial {aerial_hw}, float32; AdamW lr {LR} wd {WEIGHT_DECAY}, clip by value {CLIP_VALUE}, "
          f"InfoNCE label smoothing {LABEL_SMOOTHING}, learnable logit scale", flush=True)

    kinds = {}
    for name in variants:
        kinds.setdefault(VARIANTS[name], []).append(name)
    torch_kinds = [k for k in ("torch", "torch_passive") if k in kinds] or ["torch"]
    kinds.setdefault(torch_kinds[0], [])  # the initial weights come from a timm model
    workers, infos, initial = {}, {}, None
    try:
        for kind in [k for k in ("torch", "torch_passive") if k in kinds]:
            env = {"OMP_WAIT_POLICY": "PASSIVE"} if kind == "torch_passive" else {}
            workers[kind] = Worker(kind, opts, kinds[kind], env)
        for kind in [k for k in ("torch", "torch_passive") if k in kinds]:
            infos[kind], state = workers[kind].result()
            initial = initial if initial is not None else state
        if "cvm" in kinds:
            workers["cvm"] = Worker("cvm", opts, kinds["cvm"], {})
            workers["cvm"].send(initial)
            infos["cvm"], _ = workers["cvm"].result()
        for kind, info in infos.items():
            print(f"{kind} worker: {info}")

        if not args.nocheck:
            check(workers, variants, initial)
            for worker_ in workers.values():
                worker_.call("reset")
        for name in variants:
            start = time.perf_counter()
            for _ in range(args.warmup):
                workers[VARIANTS[name]].call("time", name, 1)
            print(f"warm-up {name}: {args.warmup} steps, {time.perf_counter() - start:.1f} s", flush=True)

        print(f"\ntimed: {args.repeats} rounds x {args.steps} steps per variant, interleaved; load average before "
              f"{load_average()}", flush=True)
        times = interleaved(workers, variants, lambda n: VARIANTS[n], args.repeats, args.steps)
        print(f"load average after {load_average()}")
        torch_names = [n for n in variants if n.startswith("torch")]
        report(times, args.batch, baseline=torch_names[0] if torch_names else None)
        for base in torch_names:
            for name in [n for n in variants if n.startswith("cvm")]:
                ratio = statistics.median(w for w, _ in times[base]) / statistics.median(w for w, _ in times[name])
                print(f"{base} / {name} = {ratio:.2f} (s/step medians; target >= 1.0): "
                      f"{'met' if ratio >= 1.0 else 'NOT met'}")

        if args.breakdown:
            torch_variant = args.breakdown_torch or next((n for n in variants if n in ("torch", "torch_passive")),
                                                         "torch")
            owner = {}
            names = workers[torch_variant].call("breakdown")
            owner.update({n: torch_variant for n in names})
            if "cvm" in workers:
                cvm_names = workers["cvm"].call("breakdown", args.breakdown_xla)
                owner.update({n: "cvm" for n in cvm_names})
                names = names + cvm_names
            print(f"\nbreakdown: {args.repeats} rounds x {args.steps} calls, interleaved; load average before "
                  f"{load_average()}", flush=True)
            btimes = interleaved(workers, names, owner.get, args.repeats, args.steps)
            print(f"load average after {load_average()}")
            med = {n: statistics.median(w for w, _ in r) for n, r in btimes.items()}
            print(f"{'side':<14}{'forward':>9}{'backward':>10}{'optimizer':>11}{'step':>8}{'step - fwd+bwd':>16}"
                  "   (s, medians; backward = fwd+bwd - fwd; optimizer: clipping + AdamW (+ torch's zero_grad) "
                  "timed alone)")
            sides = [torch_variant] + (["cvm"] if "cvm" in workers else []) + (["cvm xla"] if args.breakdown_xla
                                                                                else [])
            for side in sides:
                f, fb, o, s = (med[f"{side} {p}"] for p in ("fwd", "fwd+bwd", "optimizer", "step"))
                print(f"{side:<14}{f:>9.3f}{fb - f:>10.3f}{o:>11.3f}{s:>8.3f}{s - fb:>16.3f}")
            report(btimes, args.batch)
    finally:
        for worker_ in workers.values():
            worker_.stop()


if __name__ == "__main__":
    main()

"""The training loop of ``nmt train``: one ``Trainer`` per process, read top to bottom.

An update processes one *group* of ``world × update_freq`` token batches: each rank takes its share,
accumulates summed losses, gradients are summed across ranks once, and divided by the group's total
target-token count. The same group therefore gives the same update on 1 process with update_freq 2 as on
2 processes with update_freq 1. The batch list is a pure function of (seed, epoch, batching settings), and
a checkpoint stores the position as the next *batch* of that list, so a resumed run recomputes the list and
continues exactly where it stopped, even on another number of devices (the groups are cut anew from there).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmt import __version__, atomic, checkpoint, kernels
from nmt.train.config import RunConfig, batch_plan, device_plan, resolve, to_plain
from nmt.data.batching import collate_indices, token_batches
from nmt.data.dataset import ParallelDataset, read_manifest
from nmt.device import slow_precision_warning
from nmt.errors import NmtError
from nmt.kernels import output_cross_entropy
from nmt.kernels.allocator import configure_cpu_allocator
from nmt.model.config import model_config, total_parameters, train_flops_per_target_token
from nmt.model.transformer import Transformer
from nmt.tokens import PAD
from nmt.train import distributed as D
from nmt.train.report import STATS, Reporter, peak_flops, window_record
from nmt.train.schedule import learning_rate


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint so that a resumed run continues exactly."""

    update: int = 0
    epoch: int = 1
    batch: int = 0  # next batch of the epoch's batch list
    best_loss: float = math.inf
    nonfinite: int = 0  # updates skipped in a row
    skipped: int = 0  # updates skipped in all


def archive_run(save_dir: Path, report: Reporter) -> None:
    """``--reset``: move a run folder's checkpoints and logs into ``previous-N/`` so the run starts anew
    without losing them."""
    names = [p for p in save_dir.glob("*") if p.name.startswith(("checkpoint_", "train.jsonl", "config.json", "summary.json", "tensorboard"))]
    if not names:
        return
    n = 1
    while (save_dir / f"previous-{n}").exists():
        n += 1
    folder = save_dir / f"previous-{n}"
    folder.mkdir()
    for path in names:
        path.rename(folder / path.name)
    report.say(f"--reset: the earlier run's {len(names)} files moved to {folder}; starting anew")


class Trainer:
    def __init__(self, cfg: RunConfig, dist: D.Dist, reset: bool = False) -> None:
        cfg = resolve(cfg, dist.world, dist.device.type == "cuda")  # as launch does; a no-op when it did
        self.cfg, self.dist = cfg, dist
        if dist.device.type == "cpu":
            configure_cpu_allocator()
        self.manifest = read_manifest(cfg.data)
        self.train_set = ParallelDataset(cfg.data, "train")
        self.valid_set = ParallelDataset(cfg.data, "valid") if "valid" in self.manifest["splits"] else None
        try:
            self.model_cfg = model_config(cfg.arch, vocab_size=self.manifest["vocab"]["size"], **cfg.model)
        except ValueError as err:
            raise NmtError(str(err)) from None
        t = cfg.train
        self.report = Reporter(cfg.save_dir, dist.main)
        self.precision = self._precision()
        torch.manual_seed(t.seed)  # same initial weights on every rank
        self.model = Transformer(self.model_cfg).to(dist.device)
        if dist.device.type == "cpu":
            kernels.install(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # The fused kernel on CPUs too: 3-4× faster than the per-tensor loop there (the "foreach" one is slower).
        self.optimizer = torch.optim.Adam(self.params, lr=0.0, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps,
                                          weight_decay=t.weight_decay, fused=True)
        # fairseq's initial scale: the loss is a sum over tokens, so each token's gradient is O(1) × scale,
        # and 2^16 (torch's default) overflows float16 on the first updates.
        self.scaler = torch.amp.GradScaler(dist.device.type, init_scale=128.0, growth_interval=2000, enabled=self.precision == "fp16")
        self.ema = {k: v.detach().float().clone() for k, v in self.model.state_dict().items()} if t.ema_decay else None
        # The decoder's output, taken with the output projection to the loss (which never stores the logits on CPUs).
        self.step_features = torch.compile(self.model.features) if t.compile else self.model.features
        self.progress = Progress()
        self.vocab = torch.frombuffer(bytearray((cfg.data / "spm.model").read_bytes()), dtype=torch.uint8)
        tokens = self.manifest["splits"]["train"]
        pairs = max(tokens["pairs"], 1)
        self.flops_per_token = train_flops_per_target_token(self.model_cfg, tokens["src_tokens"] / pairs + 1, tokens["tgt_tokens"] / pairs + 1)
        self.peak = peak_flops(dist.device, self.precision)
        self.train_index = self._fitting(self.train_set, "train")
        self.valid_index = self._fitting(self.valid_set, "valid") if self.valid_set is not None else None
        self.plan = batch_plan(cfg, len(self.train_index))
        torch.manual_seed(t.seed + dist.rank)  # dropout differs per rank
        if reset and dist.main:
            archive_run(cfg.save_dir, self.report)
        D.barrier(dist.world)
        self._resume()

    # ------------------------------------------------------------------------------------------ set-up

    def _precision(self) -> str:
        p = self.cfg.train.precision
        cuda = self.dist.device.type == "cuda"
        if p == "auto":
            return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
        if warning := slow_precision_warning(p, self.dist.device):
            self.report.say(f"[yellow]--precision {warning}")
        return p

    def _fitting(self, data: ParallelDataset, split: str) -> np.ndarray:
        """Indices of the sentences the model can hold (EOS/BOS included); the others are skipped, and said so."""
        limit = self.model_cfg.max_positions - 1
        keep = np.nonzero((data.src_lengths <= limit) & (data.tgt_lengths <= limit))[0]
        if len(keep) < len(data):
            self.report.say(f"[yellow]{split}: skipping {len(data) - len(keep)} sentence pair(s) longer than the model's {limit} positions")
        return keep

    def _batches(self, data: ParallelDataset, index: np.ndarray, seed: int, epoch: int, shuffle: bool = True) -> list[np.ndarray]:
        t = self.cfg.train
        try:
            batches = token_batches(data.src_lengths[index], data.tgt_lengths[index], t.max_tokens, seed, epoch, t.pad_multiple, shuffle)
        except ValueError as err:
            raise NmtError(f"{err}; raise --max-tokens or prepare with a lower --max-len") from None
        return [index[b] for b in batches]

    def _resume(self) -> None:
        last = self.cfg.save_dir / checkpoint.LAST
        if not last.exists():
            return
        ckpt = checkpoint.load(last)
        self._check_resumable(ckpt, last)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and "ema" in ckpt:
            self.ema = {k: v.to(self.dist.device) for k, v in ckpt["ema"].items()}
        loop = dict(ckpt["progress"]["loop"])
        rng = ckpt["rng"]
        saved_world = len(rng["torch"])
        if "group" in loop:  # version 0.1 counted groups of world × update_freq batches
            loop["batch"] = loop.pop("group") * saved_world * ckpt["config"]["train"]["update_freq"]
        self.progress = Progress(**loop)
        if self.dist.rank < saved_world:
            torch.set_rng_state(rng["torch"][self.dist.rank])
            if self.dist.device.type == "cuda" and rng.get("cuda"):
                torch.cuda.set_rng_state(rng["cuda"][self.dist.rank], self.dist.device)
        p = self.progress
        self.report.say(f"resumed from {last} at update {p.update} (epoch {p.epoch}, batch {p.batch})")
        saved_slots = ckpt["config"]["train"]["max_tokens"] * ckpt["config"]["train"]["update_freq"] * saved_world
        slots = self.cfg.train.max_tokens * self.cfg.train.update_freq * self.dist.world
        if saved_world != self.dist.world:
            self.report.say(f"[yellow]saved on {saved_world} device(s), resumed on {self.dist.world}: the data order continues "
                            "exactly; dropout masks differ from an uninterrupted run")
        if saved_slots != slots:
            self.report.say(f"[yellow]token slots per update change from {saved_slots:,} to {slots:,}; "
                            "set --tokens-per-update to keep them whatever the device count")

    def _check_resumable(self, ckpt: dict[str, Any], path: Path) -> None:
        """Refuse, in one line, a run folder whose checkpoint cannot continue this run exactly."""
        where = self.cfg.save_dir
        saved = checkpoint.model_config(ckpt, path)  # with the defaults of fields added since it was written
        if saved != self.model_cfg:
            diff = [k for k, v in asdict(self.model_cfg).items() if getattr(saved, k) != v]
            raise NmtError(f"{where} holds a run of another architecture (differs in {', '.join(diff)}); use another --save-dir or --reset")
        ours, theirs = checkpoint.digest(self.vocab), checkpoint.vocab_digest(ckpt)
        if ours != theirs:
            was = ckpt.get("config", {}).get("data", "?")
            raise NmtError(f"{where} was trained with the vocabulary of {was} (spm.model sha256 {theirs[:12]}), but {self.cfg.data}/spm.model "
                           f"is sha256 {ours[:12]}: resuming would continue on mismatched ids; use another --save-dir, or --reset to start anew")
        saved = ckpt["progress"].get("batches")
        if saved is not None and saved != self.plan and ckpt["progress"]["loop"].get("batch", ckpt["progress"]["loop"].get("group")) != 0:
            diff = ", ".join(f"{k} {saved.get(k)} → {v}" for k, v in self.plan.items() if saved.get(k) != v)
            flags = ", ".join(f"--{k.replace('_', '-')} {saved[k]}" for k in ("max_tokens", "pad_multiple", "seed") if saved.get(k) != self.plan[k])
            raise NmtError(f"{path} stopped inside an epoch whose batches were cut with other settings ({diff}): resuming would skip or "
                           f"repeat data; resume with {flags or 'the same training data'}, or use --reset to start anew")

    # ------------------------------------------------------------------------------------------ steps

    def group_size(self) -> int:
        return self.dist.world * self.cfg.train.update_freq

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        return self._batches(self.train_set, self.train_index, self.cfg.train.seed, epoch)

    def train_step(self, group: list[np.ndarray], flags: tuple[float, float]) -> np.ndarray:
        """Forward/backward this rank's share of ``group``, sum gradients across ranks, update.

        Returns the reduced statistics (STATS order). The one host synchronisation per update reads them
        together with the gradient norm, which skipping non-finite updates needs; the optimizer's step is
        queued after it and not waited for, so the GPU computes it while the host collates the next batch.
        """
        model, t, device = self.model, self.cfg.train, self.dist.device
        model.train()
        stats = torch.zeros(len(STATS), dtype=torch.float64, device=device)
        stats[STATS.index("save")], stats[STATS.index("stop")] = flags
        autocast = torch.autocast(device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16,
                                  enabled=self.precision in ("bf16", "fp16"))
        shape = ""
        src_tokens = slots = 0
        # The group's target tokens (EOS included), known on every rank from the lengths alone: each loss is
        # divided by it before backpropagation, so the summed gradients are those of the token mean.
        lengths = self.train_set.tgt_lengths
        group_tokens = sum(int(lengths[idx].sum()) + len(idx) for idx in group)
        for idx in group[self.dist.rank :: self.dist.world]:
            batch = collate_indices(self.train_set, idx, t.pad_multiple).to(device)
            shape = f"source {tuple(batch.src.shape)}, target {tuple(batch.tgt_in.shape)}"
            out_of_memory = False
            try:
                with autocast:
                    hidden = self.step_features(batch.src, batch.tgt_in)
                    # The softmax and loss in float32 whatever the autocast dtype (a bf16 softmax over 37k classes loses mass).
                    loss, nll, n = output_cross_entropy(hidden.flatten(0, 1), model.output_weight, batch.tgt_out.view(-1), t.label_smoothing, PAD)
                self.scaler.scale(loss / group_tokens).backward()
            except torch.cuda.OutOfMemoryError:
                out_of_memory = True  # handled outside: the traceback would keep the tensors alive
            if out_of_memory:
                hidden = loss = batch = None
                self.optimizer.zero_grad(set_to_none=False)
                torch.cuda.empty_cache()
                # The fp16 scale is set up on first use; unscaling below needs it on every rank alike.
                self.scaler.scale(torch.zeros((), device=device))
                stats[STATS.index("oom")] += 1
                self.report.say(f"[yellow]rank {self.dist.rank}: out of GPU memory on a batch of {shape}; skipping this update on every rank (lower --max-tokens if this repeats)")
                break
            stats[:3] += torch.stack([loss.detach().double(), nll.detach().double(), n.double()])
            # Counts the host already knows stay on the host: no per-batch copy to the device.
            src_tokens += batch.src_tokens
            slots += batch.slots
        stats[STATS.index("src_tokens")] += src_tokens
        stats[STATS.index("slots")] += slots
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        D.all_reduce_(stats, self.dist.world)
        D.all_reduce_grads_(self.params, self.dist.world)
        # Unscaled and clipped before it is known whether a rank ran out of memory: such an update is
        # skipped anyway, and asking first would be a second synchronisation.
        self.scaler.unscale_(self.optimizer)
        if t.clip_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, t.clip_norm)
        else:  # the norm only: skipping non-finite updates needs it
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.params])
        host = torch.cat([stats, norm.to(stats.dtype).view(1)]).cpu().numpy()
        stats, norm_value = host[:-1], float(host[-1])
        if stats[STATS.index("oom")]:
            self.scaler.update()  # unscale_ was called: the scaler must be told the update is over
            self.optimizer.zero_grad(set_to_none=False)
            return self._skipped(stats)
        if not math.isfinite(norm_value):
            self.scaler.update()  # lowers the fp16 scale; a no-op otherwise
            self.optimizer.zero_grad(set_to_none=False)
            self.report.say(f"[yellow]update {self.progress.update + 1}: non-finite gradient, skipped")
            return self._skipped(stats)
        self.progress.nonfinite = 0
        lr = learning_rate(t, self.model_cfg.d_model, self.progress.update + 1)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=False)
        self.progress.update += 1
        if self.ema is not None:
            with torch.no_grad():
                for k, v in self.model.state_dict().items():
                    self.ema[k].mul_(t.ema_decay).add_(v.float(), alpha=1 - t.ema_decay)
        return stats

    def _skipped(self, stats: np.ndarray) -> np.ndarray:
        self.progress.nonfinite += 1
        self.progress.skipped += 1
        stats[STATS.index("skipped")] = 1
        return stats

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Loss and perplexity on the dev split, each rank a share of the batches, summed across ranks."""
        if self.valid_set is None or self.valid_index is None:
            return {}
        self.model.eval()
        t = self.cfg.train
        batches = self._batches(self.valid_set, self.valid_index, 0, 0, shuffle=False)
        sums = torch.zeros(3, dtype=torch.float64, device=self.dist.device)
        autocast = torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        for idx in batches[self.dist.rank :: self.dist.world]:
            batch = collate_indices(self.valid_set, idx, t.pad_multiple).to(self.dist.device)
            with autocast:
                hidden = self.model.features(batch.src, batch.tgt_in)
                loss, nll, n = output_cross_entropy(hidden.flatten(0, 1), self.model.output_weight, batch.tgt_out.view(-1), t.label_smoothing, PAD)
            sums += torch.stack([loss.double(), nll.double(), n.double()])
        loss, nll, n = D.all_reduce_(sums, self.dist.world).tolist()
        result = {"valid_loss": loss / max(n, 1), "valid_nll": nll / max(n, 1), "valid_ppl": math.exp(min(nll / max(n, 1), 50))}
        if t.valid_bleu and self.dist.main:
            from nmt.decode.translate import bleu_of_pairs

            pairs = [self.valid_set[int(i)] for i in self.valid_index[: t.valid_bleu]]
            result["valid_bleu"], hyps = bleu_of_pairs(self.model, self.vocab, pairs, self.cfg.decode)
            # Like Marian's --valid-translation-output: what the number was computed on, for a look.
            atomic.write_text(self.cfg.save_dir / "valid.hyp", "".join(h + "\n" for h in hyps))
        return result

    # ------------------------------------------------------------------------------------------ saving

    def payload(self) -> dict[str, Any]:
        """Everything a checkpoint holds; a collective (every rank contributes its RNG state)."""
        rng_torch = D.gather_objects(torch.get_rng_state(), self.dist.world)
        rng_cuda = D.gather_objects(torch.cuda.get_rng_state(self.dist.device), self.dist.world) if self.dist.device.type == "cuda" else []
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "model_config": asdict(self.model_cfg),
            "config": to_plain(self.cfg),
            "vocab": self.vocab,
            "manifest": {k: self.manifest[k] for k in ("corpus", "src", "tgt", "normalisation")},
            "progress": {"loop": asdict(self.progress), "batches": self.plan, "time": time.time()},
            "rng": {"torch": rng_torch, "cuda": rng_cuda},
            "version": __version__,
            **({"ema": {k: v.cpu() for k, v in self.ema.items()}} if self.ema is not None else {}),
        }

    def save(self, numbered: bool, best: bool = False, why: str = "") -> None:
        """Save at this update: ``numbered`` (the averaging window) only at the update cadence, whatever the
        hardware; time-based and validation saves only refresh ``checkpoint_last.pt`` (and the best)."""
        payload = self.payload()  # a collective: every rank takes part
        if self.dist.main:
            checkpoint.save_run(payload, self.cfg.save_dir, self.progress.update, numbered_copy=numbered, best=best,
                                keep_last=self.cfg.train.keep_last)
            saved = ([f"checkpoint_{self.progress.update}.pt"] if numbered else []) + [checkpoint.LAST] + ([checkpoint.BEST] if best else [])
            self.report.log({"update": self.progress.update, "saved": saved, "why": why})

    # ------------------------------------------------------------------------------------------ loops

    def describe(self, batches: list[np.ndarray]) -> dict[str, Any]:
        """The run's plan; ``batches`` is epoch 1's batch list, which the caller needs anyway."""
        t, world = self.cfg.train, self.dist.world
        n_params = sum(p.numel() for p in self.model.parameters())
        return {
            "parameters": n_params,
            "parameters_closed_form": total_parameters(self.model_cfg),
            "devices": world,
            "device": str(self.dist.device),
            "precision": self.precision,
            "max_tokens": t.max_tokens,
            "update_freq": t.update_freq,
            "tokens_per_update": t.max_tokens * t.update_freq * world,
            "updates_per_epoch": math.ceil(len(batches) / self.group_size()),
        }

    def dry_run(self, batches_to_time: int = 3) -> dict[str, Any]:
        """Plan of the run, with the time per update estimated from a few single-batch steps."""
        batches = self.epoch_batches(1)
        info = self.describe(batches)
        timings = []
        for i in range(min(batches_to_time, len(batches))):
            start = time.perf_counter()
            self.train_step([batches[i]] * self.dist.world, (0.0, 0.0))
            if self.dist.device.type == "cuda":
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - start)
        per_batch = min(timings[1:] or timings)  # the first step pays for warm-up
        t = self.cfg.train
        info["seconds_per_update"] = per_batch * t.update_freq
        info["estimated_hours"] = info["seconds_per_update"] * t.max_updates / 3600
        if t.tokens_per_update:
            info.update(device_plan(t.tokens_per_update, t.max_tokens))
        return info

    def fit(self) -> dict[str, Any]:
        cfg, t, p = self.cfg, self.cfg.train, self.progress
        batches = self.epoch_batches(p.epoch)
        if self.dist.main:
            cfg.save_dir.mkdir(parents=True, exist_ok=True)
            atomic.write_json(cfg.save_dir / "config.json", {"run": to_plain(cfg), "model": asdict(self.model_cfg)})
            info = self.describe(batches)
            self.report.say(f"{info['parameters'] / 1e6:.2f}M parameters, {info['devices']} device(s) {info['device']} {info['precision']}, "
                            f"{info['tokens_per_update']:,} token slots per update (max_tokens {t.max_tokens} × update_freq {t.update_freq} × {self.dist.world}), "
                            f"{info['updates_per_epoch']:,} updates per epoch")
        self.report.start_bar(t.max_updates, p.update)
        started = last_save = time.time()
        window = np.zeros(len(STATS))
        window_start = time.time()
        stats = None
        valid: dict[str, float] = {}
        if p.update >= t.max_updates:
            return self.finish(valid, started)
        while True:
            size = self.group_size()
            while p.batch < len(batches):
                elapsed = time.time() - started
                flags = (float(self.dist.main and elapsed - (last_save - started) >= t.save_minutes * 60),
                         float(self.dist.main and t.max_time > 0 and elapsed >= t.max_time))
                before = p.update
                group = batches[p.batch : p.batch + size]
                stats = self.train_step(group, flags)
                p.batch += len(group)
                window += stats
                if p.nonfinite >= t.max_nonfinite:
                    raise NmtError(f"{p.nonfinite} updates in a row were skipped (non-finite loss or out of memory); lower the learning rate or --max-tokens, or use --precision bf16/fp32")
                done = p.update >= t.max_updates or stats[STATS.index("stop")] > 0
                if p.update == before and not done:
                    continue  # a skipped update: nothing new to log or save
                if p.update % t.log_every == 0 or done:
                    in_window = t.log_every if p.update % t.log_every == 0 else p.update % t.log_every
                    left = t.max_time - (time.time() - started) if t.max_time > 0 else None
                    record = window_record(window, time.time() - window_start, p.update, p.epoch, in_window, t.max_updates - p.update,
                                           learning_rate(t, self.model_cfg.d_model, max(p.update, 1)), self.flops_per_token, self.peak,
                                           self.dist.world, seconds_left=left)
                    if self.dist.device.type == "cuda":  # what sizing --max-tokens needs: the peak so far, this rank
                        record["gpu_mem_gib"] = torch.cuda.max_memory_allocated(self.dist.device) / 2**30
                    self.report.log(record)
                    window[:] = 0
                    window_start = time.time()
                numbered = p.update % t.save_every == 0 or done
                if p.update % t.validate_every == 0 or done:
                    valid = self.validate()
                    best = bool(valid) and valid["valid_nll"] < p.best_loss
                    if best:
                        p.best_loss = valid["valid_nll"]
                    if valid:
                        self.report.log({"update": p.update, **valid})
                    self.save(numbered, best=best, why="end" if done else "validation")
                    last_save = time.time()
                elif numbered or stats[STATS.index("save")] > 0:
                    self.save(numbered, why="updates" if numbered else "time")
                    last_save = time.time()
                if done:
                    return self.finish(valid, started)
            p.epoch += 1
            p.batch = 0
            if t.max_epochs and p.epoch > t.max_epochs:
                if stats is not None:
                    valid = self.validate()
                    best = bool(valid) and valid["valid_nll"] < p.best_loss
                    if best:
                        p.best_loss = valid["valid_nll"]
                    self.save(True, best=best, why="end")
                return self.finish(valid, started)
            batches = self.epoch_batches(p.epoch)

    def finish(self, valid: dict[str, float], started: float) -> dict[str, Any]:
        p = self.progress
        summary = {"updates": p.update, "epochs": p.epoch, "seconds": time.time() - started, "best_valid_nll": p.best_loss, **valid}
        if self.dist.main:
            atomic.write_json(self.cfg.save_dir / "summary.json", summary)
        self.report.close()
        return summary

"""The training loop of ``nmt train``: one ``Trainer`` per process, read top to bottom.

An update processes one *group* of ``world × update_freq`` token batches: each rank takes its share,
accumulates losses divided by the group's target-token count, gradients are summed across ranks once, and
Adam takes one step. The same group therefore gives the same update on 1 process with update_freq 2 as on
2 processes with update_freq 1. What a checkpoint holds and how a run resumes exactly: ``nmt.train.resume``;
validation: ``nmt.train.validate``; the figures logged: ``nmt.train.report``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from nmt import atomic, checkpoint, kernels
from nmt.data.batching import Batch, collate_indices, collate_packed, pack_bucket, token_batches
from nmt.data.dataset import ParallelDataset, read_manifest, read_vocabulary
from nmt.device import slow_precision_warning
from nmt.errors import NmtError
from nmt.kernels import output_cross_entropy
from nmt.kernels.allocator import configure_cpu_allocator
from nmt.model.config import model_config, total_parameters, train_flops_per_target_token
from nmt.model.transformer import Transformer
from nmt.tokens import PAD
from nmt.train import distributed as D
from nmt.train import resume
from nmt.train.config import RunConfig, batch_plan, device_plan, resolve, to_plain
from nmt.train.report import Reporter, Stats, peak_flops, window_record
from nmt.train.schedule import learning_rate
from nmt.train.validate import validation_bleu, validation_loss

# fp16's initial loss scale. The loss is the token mean of an update (each batch's sum is divided by the
# group's target-token count before scaling), so the scaled gradients are: a weight's gradient, a sum over
# the update's tokens and O(1), times the scale, which must stay below float16's 65,504; and a token's own
# activation gradients, O(1 / tokens per update), times the scale, which should stay above float16's
# smallest normal number, 6.1e-5, or lose precision. Measured at initialisation on a 4,096-token batch of
# gettext-en-de: the largest weight-gradient element was 0.10 (tiny) and 0.16 (base), 1.1e4 at 2^16; the
# decoder output's per-token gradients had a median of 6.6e-6 and a 1st percentile of 1.2e-7 (base), so at
# 2^7 (fairseq's scale, for its summed loss) a percent of them were subnormal, at 2^16 none. torch's default
# 2^16 is therefore right for a mean loss; the scaler halves it at an overflow and doubles it after 2,000
# finite updates, so it settles where the run's gradients put it.
FP16_INIT_SCALE = 2.0**16


class Trainer:
    def __init__(self, cfg: RunConfig, dist: D.Dist, reset: bool = False) -> None:
        cfg = resolve(cfg, dist.world, dist.device.type == "cuda")  # as launch does; a no-op when it did
        self.cfg, self.dist = cfg, dist
        t = cfg.train
        if dist.device.type == "cpu":
            configure_cpu_allocator()
        self.report = Reporter(cfg.save_dir, dist.main)

        # The data: training and dev splits, through their memory maps.
        self.manifest = read_manifest(cfg.data)
        self.train_set = ParallelDataset(cfg.data, "train")
        self.valid_set = ParallelDataset(cfg.data, "valid") if "valid" in self.manifest["splits"] else None
        self.vocab = torch.frombuffer(bytearray(read_vocabulary(cfg.data, self.manifest)), dtype=torch.uint8)

        # The model, the same initial weights on every rank, and what updates it.
        try:
            self.model_cfg = model_config(cfg.arch, vocab_size=self.manifest["vocab"]["size"], **cfg.model)
        except ValueError as err:
            raise NmtError(str(err)) from None
        self.precision = self._precision()
        torch.manual_seed(t.seed)
        model = Transformer(self.model_cfg).to(dist.device)
        kernels.install(model, dist.device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # The fused kernel on CPUs too: 3-4× faster than the per-tensor loop there (the "foreach" one is slower).
        optimizer = torch.optim.Adam(self.params, lr=0.0, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps,
                                     weight_decay=t.weight_decay, fused=True)
        scaler = torch.amp.GradScaler(dist.device.type, init_scale=FP16_INIT_SCALE, growth_interval=2000, enabled=self.precision == "fp16")
        ema = {k: v.detach().float().clone() for k, v in model.state_dict().items()} if t.ema_decay else None
        self.state = resume.TrainingState(model, optimizer, scaler, ema, resume.Progress())
        # The decoder's output, taken with the output projection to the loss (which never stores the logits).
        self.step_features = torch.compile(model.features) if t.compile else model.features

        # What the figures need: FLOPs per target token, the device's peak.
        tokens = self.manifest["splits"]["train"]
        pairs = max(tokens["pairs"], 1)
        self.flops_per_token = train_flops_per_target_token(self.model_cfg, tokens["src_tokens"] / pairs + 1, tokens["tgt_tokens"] / pairs + 1)
        self.peak = peak_flops(dist.device, self.precision)

        # The sentences the model can hold, and what the batch lists depend on.
        self.train_index = self._fitting(self.train_set, "train")
        self.valid_index = self._fitting(self.valid_set, "valid") if self.valid_set is not None else None
        self.plan = batch_plan(cfg, len(self.train_index))
        torch.manual_seed(t.seed + dist.rank)  # dropout differs per rank

        # Start anew (--reset) or continue where the run folder's last checkpoint stopped.
        if reset and dist.main:
            resume.archive_run(cfg.save_dir, self.report.say)
        D.barrier(dist.world)
        if start := resume.starting_point(cfg.save_dir, cfg.resume_from):
            resume.check_resumable(start.ckpt, start.path, cfg, self.model_cfg, self.vocab, self.plan)
            for note in start.notes + resume.restore(start.ckpt, self.state, cfg, dist):
                self.report.say(note)
            p = self.progress
            self.report.say(f"resumed from {start.path} at update {p.update} (epoch {p.epoch}, batch {p.batch})")

    @property
    def model(self) -> Transformer:
        return self.state.model

    @property
    def progress(self) -> resume.Progress:
        return self.state.progress

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

    # ------------------------------------------------------------------------------------------ one update

    def collate(self, index: np.ndarray) -> Batch:
        """The training batch of sentences ``index``: padded rows, or one packed row per side (--packing)."""
        t = self.cfg.train
        if t.packing:
            return collate_packed(self.train_set, index, pack_bucket(t.max_tokens))
        return collate_indices(self.train_set, index, t.pad_multiple)

    def group_size(self) -> int:
        return self.dist.world * self.cfg.train.update_freq

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        return self._batches(self.train_set, self.train_index, self.cfg.train.seed, epoch)

    def train_step(self, group: list[np.ndarray], save: bool = False, stop: bool = False) -> Stats:
        """Forward/backward this rank's share of ``group``, sum gradients across ranks, update.

        ``save`` and ``stop`` are the main rank's requests, which every rank learns from the returned
        statistics. The one host synchronisation per update reads them together with the gradient norm,
        which skipping non-finite updates needs; the optimizer's step is queued after it and not waited for,
        so a GPU computes it while the host collates the next batch.
        """
        model, t, device, state = self.model, self.cfg.train, self.dist.device, self.state
        model.train()
        autocast = torch.autocast(device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16,
                                  enabled=self.precision in ("bf16", "fp16"))
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, nll, target tokens: stay on the device
        shape = ""
        src_tokens = slots = 0  # known on the host: no per-batch copy to the device
        oom = False
        # The group's target tokens (EOS included), known on every rank from the lengths alone: each loss is
        # divided by it before backpropagation, so the summed gradients are those of the token mean.
        lengths = self.train_set.tgt_lengths
        group_tokens = sum(int(lengths[idx].sum()) + len(idx) for idx in group)
        for idx in group[self.dist.rank :: self.dist.world]:
            batch = self.collate(idx).to(device)
            shape = f"source {tuple(batch.src.shape)}, target {tuple(batch.tgt_in.shape)}"
            try:
                with autocast:
                    hidden = self.step_features(batch.src, batch.tgt_in, batch.packing)
                    # The softmax and loss in float32 whatever the autocast dtype (a bf16 softmax over 37k classes loses mass).
                    loss, nll, n = output_cross_entropy(hidden.flatten(0, 1), model.output_weight, batch.tgt_out.view(-1), t.label_smoothing, PAD)
                state.scaler.scale(loss / group_tokens).backward()
            except torch.cuda.OutOfMemoryError:
                oom = True  # handled outside: the traceback would keep the tensors alive
            if oom:
                hidden = loss = batch = None
                state.optimizer.zero_grad(set_to_none=False)
                torch.cuda.empty_cache()
                # The fp16 scale is set up on first use; unscaling below needs it on every rank alike.
                state.scaler.scale(torch.zeros((), device=device))
                self.report.say(f"[yellow]rank {self.dist.rank}: out of GPU memory on a batch of {shape}; skipping this update on every rank (lower --max-tokens if this repeats)")
                break
            sums += torch.stack([loss.detach().double(), nll.detach().double(), n.double()])
            src_tokens += batch.src_tokens
            slots += batch.slots
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        host_counts = Stats(src_tokens=src_tokens, slots=slots, oom=float(oom), save=float(save), stop=float(stop)).vector(device)
        stats = torch.cat([sums, host_counts[3:]])
        D.all_reduce_(stats, self.dist.world)
        D.all_reduce_grads_(self.params, self.dist.world)
        # Unscaled and clipped before it is known whether a rank ran out of memory: such an update is
        # skipped anyway, and asking first would be a second synchronisation.
        state.scaler.unscale_(state.optimizer)
        if t.clip_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, t.clip_norm)
        else:  # the norm only: skipping non-finite updates needs it
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.params])
        *values, norm_value = torch.cat([stats, norm.to(stats.dtype).view(1)]).tolist()
        result = Stats.of(values)
        if result.oom or not math.isfinite(norm_value):
            state.scaler.update()  # unscale_ was called: the scaler must be told; lowers the fp16 scale
            state.optimizer.zero_grad(set_to_none=False)
            if not result.oom:
                self.report.say(f"[yellow]update {self.progress.update + 1}: non-finite gradient, skipped")
            self.progress.nonfinite += 1
            self.progress.skipped += 1
            result.skipped = 1.0
            return result
        self.progress.nonfinite = 0
        lr = learning_rate(t, self.model_cfg.d_model, self.progress.update + 1)
        for g in state.optimizer.param_groups:
            g["lr"] = lr
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.optimizer.zero_grad(set_to_none=False)
        self.progress.update += 1
        if state.ema is not None:
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    state.ema[k].mul_(t.ema_decay).add_(v.float(), alpha=1 - t.ema_decay)
        return result

    # ------------------------------------------------------------------------------------------ validation and saving

    def validate(self) -> dict[str, float]:
        """Loss and perplexity on the dev split; with --valid-bleu N, the sacreBLEU of the first N sentences."""
        if self.valid_set is None or self.valid_index is None:
            return {}
        t = self.cfg.train
        batches = self._batches(self.valid_set, self.valid_index, 0, 0, shuffle=False)
        result = validation_loss(self.model, self.valid_set, batches, t.pad_multiple, t.label_smoothing, self.precision, self.dist)
        if t.valid_bleu and self.dist.main:
            pairs = [self.valid_set[int(i)] for i in self.valid_index[: t.valid_bleu]]
            result["valid_bleu"], hyps = validation_bleu(self.model, self.vocab, pairs, self.cfg.decode)
            # Like Marian's --valid-translation-output: what the number was computed on, for a look.
            atomic.write_text(self.cfg.save_dir / "valid.hyp", "".join(h + "\n" for h in hyps))
        return result

    def save(self, numbered: bool, best: bool = False, why: str = "") -> None:
        """Save at this update: ``numbered`` (the averaging window) only at the update cadence, whatever the
        hardware; time-based and validation saves only refresh ``checkpoint_last.pt`` (and the best)."""
        payload = resume.payload(self.state, self.cfg, self.model_cfg, self.vocab, self.manifest, self.plan, self.dist)  # a collective
        if self.dist.main:
            checkpoint.save_run(payload, self.cfg.save_dir, self.progress.update, numbered_copy=numbered, best=best,
                                keep_last=self.cfg.train.keep_last)
            saved = ([f"checkpoint_{self.progress.update}.pt"] if numbered else []) + [checkpoint.LAST] + ([checkpoint.BEST] if best else [])
            self.report.log({"update": self.progress.update, "saved": saved, "why": why})

    def validate_and_save(self, numbered: bool, why: str) -> dict[str, float]:
        """Validate, log the figures, and save, marking the checkpoint best when its dev loss is the lowest yet."""
        valid = self.validate()
        best = bool(valid) and valid["valid_nll"] < self.progress.best_loss
        if best:
            self.progress.best_loss = valid["valid_nll"]
        if valid:
            self.report.log({"update": self.progress.update, **valid})
        self.save(numbered, best=best, why=why)
        return valid

    # ------------------------------------------------------------------------------------------ the run

    def describe(self, batches: list[np.ndarray]) -> dict[str, Any]:
        """The run's plan; ``batches`` is epoch 1's batch list, which the caller needs anyway."""
        t, world = self.cfg.train, self.dist.world
        return {
            "parameters": sum(p.numel() for p in self.model.parameters()),
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
            self.train_step([batches[i]] * self.dist.world)
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
        """Train until --max-updates, --max-epochs or --max-time; returns the summary."""
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
        started = last_save = window_start = time.time()
        window = Stats()
        valid: dict[str, float] = {}
        trained = False  # whether this process ran an update (an epoch limit met on resuming saves nothing)
        while p.update < t.max_updates:
            if p.batch >= len(batches):  # the epoch is over
                if t.max_epochs and p.epoch >= t.max_epochs:
                    if trained:
                        valid = self.validate_and_save(True, why="end")
                    break
                p.epoch += 1
                p.batch = 0
                batches = self.epoch_batches(p.epoch)
                continue
            elapsed = time.time() - started
            group = batches[p.batch : p.batch + self.group_size()]
            before = p.update
            stats = self.train_step(group, save=self.dist.main and elapsed - (last_save - started) >= t.save_minutes * 60,
                                    stop=self.dist.main and t.max_time > 0 and elapsed >= t.max_time)
            p.batch += len(group)
            window += stats
            trained = True
            if p.nonfinite >= t.max_nonfinite:
                raise NmtError(f"{p.nonfinite} updates in a row were skipped (non-finite loss or out of memory); lower the learning rate or --max-tokens, or use --precision bf16/fp32")
            done = p.update >= t.max_updates or stats.stop > 0
            if p.update == before and not done:
                continue  # a skipped update: nothing new to log or save
            if p.update % t.log_every == 0 or done:
                self._log_window(window, time.time() - window_start, started)
                window, window_start = Stats(), time.time()
            numbered = p.update % t.save_every == 0 or done
            if p.update % t.validate_every == 0 or done:
                valid = self.validate_and_save(numbered, why="end" if done else "validation")
                last_save = time.time()
            elif numbered or stats.save > 0:
                self.save(numbered, why="updates" if numbered else "time")
                last_save = time.time()
            if done:
                break
        return self.finish(valid, started)

    def _log_window(self, window: Stats, seconds: float, started: float) -> None:
        t, p = self.cfg.train, self.progress
        in_window = t.log_every if p.update % t.log_every == 0 else p.update % t.log_every
        left = t.max_time - (time.time() - started) if t.max_time > 0 else None
        record = window_record(window, seconds, p.update, p.epoch, in_window, t.max_updates - p.update,
                               learning_rate(t, self.model_cfg.d_model, max(p.update, 1)), self.flops_per_token, self.peak,
                               self.dist.world, seconds_left=left)
        if self.dist.device.type == "cuda":  # what sizing --max-tokens needs: the peak so far, this rank
            record["gpu_mem_gib"] = torch.cuda.max_memory_allocated(self.dist.device) / 2**30
        self.report.log(record)

    def finish(self, valid: dict[str, float], started: float) -> dict[str, Any]:
        p = self.progress
        summary = {"updates": p.update, "epochs": p.epoch, "seconds": time.time() - started, "best_valid_nll": p.best_loss, **valid}
        if self.dist.main:
            atomic.write_json(self.cfg.save_dir / "summary.json", summary)
        self.report.close()
        return summary

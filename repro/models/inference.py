"""Early-exit inference that skips the work after a sample's exit (Scardapane et al., ICASSP 2020, Sec. 2:
at test time a sample stops at the first exit whose criterion fires).

Five paths, all taking the criterion's scores and firing rule from repro.criteria so that they agree
exactly with its `select_exits` reference:
- `early_exit_single`: one sample at a time (batch size 1): run a segment, its branch, decide, stop.
- `early_exit_batched`: a whole batch; the samples that left are removed before the next segment runs,
  so the work shrinks with the batch.
- `early_exit_stream`: a stream of batches; the samples that stay queue before their next segment, which
  runs on full batches (throughput for latency).
- `run_all_then_select`: the reference: every exit for every sample (`run_every_exit`), then
  `criteria.select_exits`.
- `run_plain`: the network without exits (backbone and final classifier only), the speed-up baseline.
MACs per sample are the model's measured cumulative cost of the exit taken (repro.models.costs; it counts
every gate on the way, which only the gate criterion computes).
The model runs in eval mode (switched for the call and switched back when it was training).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import torch

from repro.criteria import check_criterion, decide_one, fires, scores, select_exits, threshold_list
from repro.errors import ReproError
from repro.models.layers import eval_mode


class EarlyExitResult(NamedTuple):
    """Per sample, on the CPU whatever device the model ran on."""

    predictions: torch.Tensor  # int64 [N] predicted class
    exits: torch.Tensor  # int64 [N] exit taken, 0..E-1 (E-1 = the final classifier)
    macs: torch.Tensor  # float64 [N] MACs spent on the sample (cumulative cost of its exit)


@contextmanager
def _eval_mode(model):
    """Eval mode for the call; a model already in eval mode is left as it is (no per-call bookkeeping)."""
    if not model.training:
        yield
        return
    with eval_mode(model):
        yield


def _prepare(model, x: torch.Tensor, criterion: str, thresholds) -> list[float]:
    """Validate once per call; thresholds -> one Python float (float64) per early exit."""
    model.check_input(x)
    check_criterion(criterion, has_gates=True)
    return threshold_list(thresholds, model.num_exits - 1)


# Calls with at least this many images run in channels-last layout on a CPU: oneDNN's convolutions then
# skip a layout conversion per layer. Measured on this project's 2-core CPU (benchmarks/bench_exits.py,
# "memory layout", full-width models, float32): the plain networks 1.1-1.2x faster at batch 256, mixed at 64
# (VGG-13 1% slower, AlexNet 1% and ResNet-18 10% faster), 1.1-1.6x slower at batch 1-4; so batch 1 keeps
# the default layout.
CHANNELS_LAST_MIN_BATCH = 64


def memory_layout(device: torch.device, batch_size: int) -> torch.memory_format:
    """The layout a call of `batch_size` images runs in on `device`.

    Chosen once per call (never per chunk or per shrinking sub-batch): on this CPU oneDNN's convolutions give
    every sample the same float32 outputs at any batch size above 1 in either layout, while the two layouts
    differ by rounding (~1e-7). The exit heads and classifiers are matrix products, and MKL's sgemm rounds a
    row differently with the number of rows in the call (a few float32 ulps, measured 4e-8), so an early-exit
    call that drops samples matches its full-batch reference to rounding, not bit for bit: only a score
    within that rounding of its threshold can exit elsewhere (tests/test_inference.py); with every threshold
    between two samples' scores, every exit is the reference's."""
    if device.type == "cpu" and batch_size >= CHANNELS_LAST_MIN_BATCH:
        return torch.channels_last
    return torch.contiguous_format


def in_layout(x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """x [N, C, H, W] in `memory_layout(x.device, batch_size or N)` (the same values)."""
    return x.contiguous(memory_format=memory_layout(x.device, len(x) if batch_size is None else batch_size))


# On a CPU a batch goes through each segment (and its exit head) in pieces whose largest activation stays
# under PIECE_BYTES. Why (benchmarks/profile_early_exit.py, this project's 2-core CPU, VGG-13 width 0.5, batch
# 256): the first exit's head writes a 64 x 32 x 32 map per image, 67 MB for the batch, and a fresh buffer that
# large costs a page fault per 4 KB page on first touch (glibc serves it with mmap and unmaps it on free)
# and does not fit any cache; segment 0 + head 0 ran 1.7x faster in pieces of 32 than at 256 at once. Later
# segments, whose maps are small, keep the whole batch (a piece is then the batch) so that their matrix
# products stay large. A GPU takes the batch whole. The sizes are per sample in the dtype the model had when
# its costs were first measured.
PIECE_BYTES = 8 * 2**20


def piece_sizes(model, device: torch.device, heads: bool = True) -> list[int]:
    """Per segment b: the most samples one piece may hold on `device`, so that no activation of segment b (and,
    with `heads`, of its exit head; the final classifier for the last) exceeds PIECE_BYTES (the activations
    per sample that repro.models.costs measured). A GPU: no limit (0)."""
    if device.type != "cpu":
        return [0] * model.num_exits
    return [max(1, PIECE_BYTES // max(1, max(segment, head) if heads else segment))
            for segment, head in model.costs.activation_bytes]


def _pieces(n: int, size: int) -> list[slice]:
    """range(n) in the fewest slices of at most `size` (0: one slice), near-equal in length, so that no piece
    is a tail of one or two samples that costs a whole kernel sequence (and batch 1's other arithmetic)."""
    if size <= 0 or size >= n:
        return [slice(0, n)]
    count = -(-n // size)
    bounds = [n * k // count for k in range(count + 1)]
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]


def _result(model, predictions, exits) -> EarlyExitResult:
    """Per-sample predictions and exits, as tensors (batched paths) or Python int lists (batch 1: a tensor
    write per sample costs more than the list), with each sample's MACs."""
    cumulative = model.costs.cumulative_macs
    if isinstance(exits, torch.Tensor):
        predictions, exits = predictions.cpu(), exits.cpu()
        taken = exits.tolist()
    else:
        taken = exits
        predictions, exits = torch.tensor(predictions, dtype=torch.long), torch.tensor(exits, dtype=torch.long)
    macs = torch.tensor([cumulative[e] for e in taken], dtype=torch.float64)
    return EarlyExitResult(predictions, exits, macs)


def _in_pieces(model, b: int, h: torch.Tensor, size: int) -> torch.Tensor:
    """Segment b on h in `_pieces` of at most `size` samples, the outputs joined; one call when h fits."""
    if size <= 0 or len(h) <= size:
        return model.run_segment(b, h)
    return torch.cat([model.run_segment(b, h[piece]) for piece in _pieces(len(h), size)])


def _exit_outputs(branch, h: torch.Tensor, criterion: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An exit's logits, and its gate only where the criterion reads it (entropy and top probability do
    not: a bnet network's gates are never trained). The gate is the branch's own computation
    (ExitBranch.gate_logit), so the gate criterion sees exactly the values training and the reference do."""
    maps = branch.features(h)
    if criterion != "gate":
        return branch.logits(maps), None
    features = maps.flatten(1)
    return branch.logits(maps, features), torch.sigmoid(branch.gate_logit(features))


@torch.inference_mode()
def early_exit_single(model, x: torch.Tensor, criterion: str, thresholds) -> EarlyExitResult:
    """Each sample of x [N, C, H, W] alone (batch size 1): stop at its first firing exit.

    Each exit computes its branch and classifier, and its gate where the criterion reads it (the cost model
    counts every gate: 0.01-0.05% of an exit's MACs, which entropy and top probability skip); the decision is
    `criteria.fires_one` for entropy and top probability (exactly the reference's decision, in one tensor
    op instead of about ten) or the gate read once."""
    values = _prepare(model, x, criterion, thresholds)
    last = model.num_exits - 1
    if last == 0:
        return _without_early_exits(model, x)
    branches = tuple(model.branches)  # indexing the ModuleList costs ~2 us an exit
    predictions, exits = [], []  # Python ints, made tensors once: a tensor write per sample costs more
    with _eval_mode(model):
        for i in range(len(x)):
            h = x[i : i + 1]
            for b in range(last):
                h = model.run_segment(b, h)
                logits, gate = _exit_outputs(branches[b], h, criterion)
                if criterion == "gate":
                    predicted = logits.argmax(dim=-1).item() if gate.item() >= values[b] else None
                else:
                    predicted = decide_one(criterion, logits, values[b])
                if predicted is not None:
                    exits.append(b)
                    predictions.append(predicted)
                    break
            else:
                exits.append(last)
                predictions.append(model.classifier(model.run_segment(last, h)).argmax(dim=-1).item())
    return _result(model, predictions, exits)


def _without_early_exits(model, x: torch.Tensor) -> EarlyExitResult:
    """`early_exit_single` for a network without early exits: each sample through the plain network, nothing
    to decide. Why apart: after a forward pass at batch 1 each further tensor operation runs with cold caches
    (15-20 us each on this project's CPU, against 2-5 us in a warm loop), and the general path reads each
    prediction into Python and then builds three tensors from lists; here the argmax stays a tensor and the
    exits and MACs are two filled tensors (benchmarks/bench_call_overhead.py)."""
    n = len(x)
    with _eval_mode(model):
        if n == 1:  # the batch-1 call: x itself, its argmax as it is (no slice, no join)
            predictions = model.classifier(model.run_segment(0, x)).argmax(dim=-1)
        else:
            rows = [model.classifier(model.run_segment(0, x[i : i + 1])).argmax(dim=-1) for i in range(n)]
            predictions = torch.cat(rows) if rows else torch.empty(0, dtype=torch.long)
    macs = torch.full((n,), model.costs.cumulative_macs[0], dtype=torch.float64)
    return EarlyExitResult(predictions.cpu(), torch.zeros(n, dtype=torch.long), macs)


def _exit_step(model, branches, b: int, h: torch.Tensor, active: torch.Tensor, size: int, criterion: str, value: float,
               exits: torch.Tensor, predictions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Segment b and its exit on h (the samples `active`, indices into the call's input) in `_pieces` of at
    most `size`: the samples whose exit fires get their exit and prediction written; returns the others'
    segment outputs and indices (None when none is left).

    The pieces' exit outputs are decided together, once (a decision is about ten small tensor operations,
    which cost the same for 32 samples as for 256), and each piece's survivors are gathered from it."""
    pieces = _pieces(len(h), size)
    outs, logits, gates = [], [], []
    for piece in pieces:  # a view of the batch: no copy
        out = model.run_segment(b, h[piece])
        piece_logits, gate = _exit_outputs(branches[b], out, criterion)
        outs.append(out)
        logits.append(piece_logits)
        gates.append(gate)
    if len(pieces) == 1:
        logits, gates = logits[0], gates[0]
    else:
        logits, gates = torch.cat(logits), (torch.cat(gates) if criterion == "gate" else None)
    fired = fires(criterion, scores(criterion, logits, gates), value)
    if not fired.any():
        return (outs[0] if len(outs) == 1 else torch.cat(outs)), active
    left = active[fired]
    exits[left] = b
    predictions[left] = logits[fired].argmax(dim=-1)
    stay = ~fired
    kept = gather_survivors(outs, pieces, stay)
    return None if kept is None else (kept, active[stay])


def _is_channels_last(t: torch.Tensor) -> bool:
    """A 4-d map stored (N, H, W, C) and not also contiguous (where both orders coincide, rows are the same)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _sample_rows(t: torch.Tensor) -> torch.Tensor:
    """A view [N, -1] of t [N, ...] with one row per sample: each sample of a contiguous or channels-last map
    is one block of memory, in (C, H, W) or (H, W, C) order."""
    return t.permute(0, 2, 3, 1).view(len(t), -1) if _is_channels_last(t) else t.view(len(t), -1)


def gather_survivors(outs: list[torch.Tensor], pieces: list[slice], stay: torch.Tensor) -> torch.Tensor | None:
    """The samples `stay` (bool, over the pieces joined) of the pieces' outputs, in order, in one tensor of
    the pieces' layout; None when none stays.

    Each piece's survivors are copied once, as whole rows of memory, straight into the result. Boolean
    indexing each piece and then joining the pieces copied every survivor twice: for the 78 of 256 samples
    that stay after the first exit of a width-0.5 VGG-13 (10 MB of maps) that took 1.6 ms a batch, this
    0.9 ms, on this project's 2-core CPU."""
    kept = [(out, stay[piece].nonzero().squeeze(1)) for out, piece in zip(outs, pieces)]
    total = sum(len(index) for _, index in kept)
    if total == 0:
        return None
    first = outs[0]
    if len(kept) == 1 and total == len(first):
        return first
    layout = torch.channels_last if _is_channels_last(first) else torch.contiguous_format
    result = torch.empty((total, *first.shape[1:]), dtype=first.dtype, device=first.device, memory_format=layout)
    rows, at = _sample_rows(result), 0
    for out, index in kept:
        if len(index):
            source = _sample_rows(out.contiguous(memory_format=layout))  # the pieces' layout: no copy
            torch.index_select(source, 0, index, out=rows[at : at + len(index)])
            at += len(index)
    return result


def _final_step(model, h: torch.Tensor, active: torch.Tensor, size: int, predictions: torch.Tensor) -> None:
    """The last segment in pieces, the final classifier once (its weights are read once a call)."""
    predictions[active] = model.classifier(_in_pieces(model, model.num_exits - 1, h, size)).argmax(dim=-1)


def _check_batch_size(batch_size, allow_none: bool) -> None:
    if batch_size is None and allow_none:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ReproError(f"batch_size must be a positive integer; got {batch_size!r}")


@torch.inference_mode()
def early_exit_batched(model, x: torch.Tensor, criterion: str, thresholds, batch_size: int | None = None) -> EarlyExitResult:
    """x [N, C, H, W] in batches of `batch_size` (None: all at once); after each early exit the samples
    that left are dropped, so later segments run on fewer samples."""
    values = _prepare(model, x, criterion, thresholds)
    _check_batch_size(batch_size, allow_none=True)
    last = model.num_exits - 1
    predictions = torch.empty(len(x), dtype=torch.long, device=x.device)
    exits = torch.full((len(x),), last, dtype=torch.long, device=x.device)
    step = batch_size or max(len(x), 1)
    sizes = piece_sizes(model, x.device)
    last_size = piece_sizes(model, x.device, heads=False)[last]
    branches = tuple(model.branches)
    with _eval_mode(model):
        for start in range(0, len(x), step):
            h = in_layout(x[start : start + step], len(x))  # the call's layout, inherited by later segments
            state = h, torch.arange(start, start + len(h), device=x.device)  # indices into x of the samples still in
            for b in range(last):
                state = _exit_step(model, branches, b, *state, sizes[b], criterion, values[b], exits, predictions)
                if state is None:
                    break
            else:
                _final_step(model, *state, last_size, predictions)
    return _result(model, predictions, exits)


class StreamResult(NamedTuple):
    """`early_exit_stream`'s per-sample results (as EarlyExitResult's), and how long each sample waited."""

    predictions: torch.Tensor
    exits: torch.Tensor
    macs: torch.Tensor
    waited: torch.Tensor  # int64 [N] input batches that entered after the sample's own before it was decided


class _Queue:
    """The samples waiting for one segment: their activations and indices, in arrival order."""

    def __init__(self):
        self.parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.count = 0

    def put(self, h: torch.Tensor, active: torch.Tensor) -> None:
        self.parts.append((h, active))
        self.count += len(active)

    def take(self, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `limit` samples waiting (all of them when fewer), joined; the rest stay queued."""
        parts, self.parts, self.count = self.parts, [], 0
        h = parts[0][0] if len(parts) == 1 else torch.cat([part[0] for part in parts])
        active = parts[0][1] if len(parts) == 1 else torch.cat([part[1] for part in parts])
        if len(active) > limit:
            self.put(h[limit:], active[limit:])
            h, active = h[:limit], active[:limit]
        return h, active


@torch.inference_mode()
def early_exit_stream(model, x: torch.Tensor, criterion: str, thresholds, batch_size: int = 256) -> StreamResult:
    """x [N, C, H, W] as a stream entering `batch_size` at a time, each segment run on full batches.

    `early_exit_batched` runs each batch's survivors on together, so later segments see ever smaller,
    ragged batches (of 256 images, about 75 reach the second segment of a trained bnet VGG-13 and 17 the
    final classifier, whose weights are then read for 17 images). Here the survivors queue before their
    next segment, which runs only when batch_size of them wait (and, once the stream ends, on what is left),
    so every segment works on full batches but for its last call. The price is latency: a sample that goes
    deep waits until enough later samples reach its segment. `waited` counts, per sample, the input
    batches that entered after its own before it was decided (0 for a sample decided in the step its batch
    entered: every sample that leaves at the first exit, for one); a sample's latency is about (waited + 1)
    batch steps. The stream's end runs whatever waits, so a short stream's waits are cut short.
    The exits and predictions are early_exit_batched's (each sample's scores depend on it alone, up to
    the rounding `memory_layout` describes); the layout is the one a batch of batch_size runs in.
    """
    values = _prepare(model, x, criterion, thresholds)
    _check_batch_size(batch_size, allow_none=False)
    last = model.num_exits - 1
    predictions = torch.empty(len(x), dtype=torch.long, device=x.device)
    exits = torch.full((len(x),), last, dtype=torch.long, device=x.device)
    decided_at = torch.empty(len(x), dtype=torch.long, device=x.device)  # the input batch entered when decided
    sizes = piece_sizes(model, x.device)
    last_size = piece_sizes(model, x.device, heads=False)[last]
    branches = tuple(model.branches)
    queues = [_Queue() for _ in range(model.num_exits)]  # queues[b]: waiting for segment b
    starts = range(0, len(x), batch_size)

    def run(b: int, h: torch.Tensor, active: torch.Tensor, step: int) -> None:
        if b == last:
            _final_step(model, h, active, last_size, predictions)
            decided_at[active] = step
            return
        left = _exit_step(model, branches, b, h, active, sizes[b], criterion, values[b], exits, predictions)
        decided_at[active] = step  # the survivors' entries are written again when they are decided
        if left is not None:
            queues[b + 1].put(*left)

    with _eval_mode(model):
        for step, start in enumerate(starts):
            h = in_layout(x[start : start + batch_size], min(batch_size, len(x)))  # a batch's layout, as run_plain's
            run(0, h, torch.arange(start, start + len(h), device=x.device), step)
            for b in range(1, last + 1):  # shallow first, so that a segment's survivors can fill the next batch
                while queues[b].count >= batch_size:
                    run(b, *queues[b].take(batch_size), step)
        for b in range(1, last + 1):  # the stream ended: what waits runs, in batches of at most batch_size
            while queues[b].count:
                run(b, *queues[b].take(batch_size), len(starts) - 1)
    result = _result(model, predictions, exits)
    arrived = torch.arange(len(x), device=x.device) // batch_size
    return StreamResult(*result, (decided_at - arrived).cpu())


@torch.inference_mode()
def run_all_then_select(model, x: torch.Tensor, criterion: str, thresholds) -> EarlyExitResult:
    """The reference: every exit for every sample, then criteria.select_exits."""
    values = _prepare(model, x, criterion, thresholds)
    out = run_every_exit(model, x)
    logits = torch.stack(out.logits)
    gates = torch.stack(out.gates) if out.gates else logits.new_zeros(0, len(x))
    exits, predictions = select_exits(criterion, values, logits, gates)
    return _result(model, predictions, exits)


@torch.inference_mode()
def run_every_exit(model, x: torch.Tensor):
    """Every exit's logits and gate for every sample of x [N, C, H, W] (`model(x)` in eval mode, in the
    batch's fastest layout): the reference's work, and the "full" path of the timings."""
    model.check_input(x)
    with _eval_mode(model):
        return model(in_layout(x))


@torch.inference_mode()
def run_plain(model, x: torch.Tensor) -> torch.Tensor:
    """The network without exits: x [N, C, H, W] -> final logits [N, C], no branch evaluated."""
    model.check_input(x)
    # Batch 1 is always one piece: skip sizing it (3 us, 0.1-0.2% of a call; benchmarks/bench_call_overhead.py).
    sizes = piece_sizes(model, x.device, heads=False) if len(x) > 1 else [0] * model.num_exits
    with _eval_mode(model):
        h = in_layout(x)
        for b in range(model.num_exits):  # early exit's segments, in pieces sized by the segment alone (no heads)
            h = _in_pieces(model, b, h, sizes[b])
        return model.classifier(h)

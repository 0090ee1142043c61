"""Early-exit inference: the skipping paths equal the run-everything-then-select reference exactly,
and the work they do (counted by torch's FLOP counter) is exactly the cost of the exits taken.

Models are float64 so that batch-size-dependent rounding cannot flip a threshold comparison; the
thresholds are random midpoints between neighbouring scores, so every exit gets some samples.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from repro import criteria
from repro.errors import ReproError
from repro.models import create_model, list_models
from repro.models.inference import (
    CHANNELS_LAST_MIN_BATCH,
    EarlyExitResult,
    early_exit_batched,
    early_exit_single,
    early_exit_stream,
    run_all_then_select,
    run_every_exit,
    run_plain,
)

SHAPES = [(3, 32), (1, 28)]
CUSTOM_EXITS = {"vgg13": [1, 4, 8], "alexnet": [1, 3], "resnet18": [0, 3, 6]}
WIDTH = 0.125
N = 10  # samples per check


def tiny(name, shape, exits, seed=0):
    torch.manual_seed(seed)
    chosen = None if exits == "default" else CUSTOM_EXITS[name]
    return create_model(name, 5, shape[0], shape[1], exits=chosen, width=WIDTH).double().eval()


def images(shape, n=N, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, shape[0], shape[1], shape[1], generator=generator, dtype=torch.float64)


def midpoint_thresholds(model, x, criterion, seed):
    """Per early exit, a random midpoint between two neighbouring distinct scores (so no score sits on it)."""
    out = model(x)
    score = criteria.scores(criterion, torch.stack(out.logits), torch.stack(out.gates)).double()
    generator = torch.Generator().manual_seed(seed)
    thresholds = []
    for row in score:
        values = row.unique(sorted=True)
        gaps = values[1:] - values[:-1]
        midpoints = ((values[1:] + values[:-1]) / 2)[gaps > 1e-6]
        if len(midpoints) == 0:
            midpoints = torch.tensor([0.0 if criterion == "entropy" else 1.0], dtype=torch.float64)
        thresholds.append(midpoints[torch.randint(len(midpoints), (1,), generator=generator)].item())
    return thresholds


def forcing_thresholds(model, exit_index):
    """Entropy thresholds that send every sample out at `exit_index`: 0 never fires (no random model is
    one-hot), 1 always fires (normalised entropy is at most 1)."""
    return [1.0 if b == exit_index else 0.0 for b in range(model.num_exits - 1)]


def skipped_gate_macs(model, exits, criterion) -> float:
    """MACs of the gates that the cost model counts for these exits but the skipping paths do not compute:
    every gate on the way for entropy and top probability (they never read one), none for the gate criterion."""
    if criterion == "gate":
        return 0.0
    gates = model.costs.gate_macs
    return float(sum(sum(gates[: min(e + 1, len(gates))]) for e in exits.tolist()))


def counted_flops(fn, *args):
    with FlopCounterMode(display=False) as counter:
        result = fn(*args)
    return counter.get_total_flops(), result


@pytest.mark.parametrize("exits", ["default", "custom"])
@pytest.mark.parametrize("shape", SHAPES, ids=["3x32", "1x28"])
@pytest.mark.parametrize("name", list_models())
def test_skipping_paths_equal_the_reference(name, shape, exits):
    model = tiny(name, shape, exits)
    seen_exits = set()
    for seed, criterion in enumerate(criteria.CRITERIA * 2):  # every criterion, two seeds each
        x = images(shape, seed=seed)
        thresholds = midpoint_thresholds(model, x, criterion, seed)
        reference = run_all_then_select(model, x, criterion, thresholds)
        single_flops, single = counted_flops(early_exit_single, model, x, criterion, thresholds)
        batched_flops, batched = counted_flops(early_exit_batched, model, x, criterion, thresholds)
        for result in (single, batched):
            assert torch.equal(result.exits, reference.exits)
            assert torch.equal(result.predictions, reference.predictions)
            assert torch.equal(result.macs, reference.macs)
        # The reference is the select_exits of criteria on every exit's outputs, taken independently here.
        out = model(x)
        exits_direct, predictions_direct = criteria.select_exits(
            criterion, thresholds, torch.stack(out.logits), torch.stack(out.gates)
        )
        assert torch.equal(reference.exits, exits_direct) and torch.equal(reference.predictions, predictions_direct)
        # Both paths did exactly the work of the exits taken (FLOPs = 2 x MACs), no more, less the gates
        # that the criterion does not read.
        spent = reference.macs.sum().item() - skipped_gate_macs(model, reference.exits, criterion)
        assert single_flops == batched_flops == 2 * spent
        seen_exits.update(reference.exits.tolist())
    assert len(seen_exits) >= 2  # the thresholds really spread samples over exits


@pytest.mark.parametrize("exit_index", [0, 1])
@pytest.mark.parametrize("shape", SHAPES, ids=["3x32", "1x28"])
@pytest.mark.parametrize("name", list_models())
def test_forced_exit_spends_exactly_that_exits_cost(name, shape, exit_index):
    model = tiny(name, shape, "default")
    thresholds = forcing_thresholds(model, exit_index)
    cost = model.costs.cumulative_macs[exit_index]
    gates = sum(model.costs.gate_macs[: exit_index + 1])  # entropy reads no gate
    assert gates > 0
    flops, single = counted_flops(early_exit_single, model, images(shape, n=1), "entropy", thresholds)
    assert single.exits.tolist() == [exit_index] and single.macs.tolist() == [cost]
    assert flops == 2 * (cost - gates)
    flops, batched = counted_flops(early_exit_batched, model, images(shape, n=4), "entropy", thresholds)
    assert batched.exits.tolist() == [exit_index] * 4 and flops == 2 * 4 * (cost - gates)
    # gate >= 1 never fires (sigmoid < 1 here), gate >= 0 always does
    gate_thresholds = [0.0 if b == exit_index else 1.0 for b in range(model.num_exits - 1)]
    flops, gated = counted_flops(early_exit_single, model, images(shape, n=1), "gate", gate_thresholds)
    assert gated.exits.tolist() == [exit_index] and flops == 2 * cost  # the gate criterion computes every gate


def test_nothing_fires_then_everything_leaves_at_the_final_exit():
    model = tiny("alexnet", (3, 32), "default")
    x = images((3, 32))
    result = early_exit_batched(model, x, "maxprob", 1.0)
    assert result.exits.tolist() == [4] * N
    assert torch.equal(result.predictions, run_plain(model, x).argmax(dim=-1))
    assert result.macs.tolist() == [model.costs.cumulative_macs[-1]] * N
    assert result.predictions.dtype == result.exits.dtype == torch.int64 and result.macs.dtype == torch.float64
    assert isinstance(result, EarlyExitResult)


def test_batched_chunks_agree_and_empty_input_works():
    model = tiny("resnet18", (1, 28), "custom")
    x = images((1, 28), n=9)
    thresholds = midpoint_thresholds(model, x, "gate", seed=3)
    whole = early_exit_batched(model, x, "gate", thresholds)
    chunked = early_exit_batched(model, x, "gate", thresholds, batch_size=4)
    assert torch.equal(whole.exits, chunked.exits) and torch.equal(whole.predictions, chunked.predictions)
    empty = early_exit_batched(model, x[:0], "gate", thresholds)
    assert empty.exits.shape == empty.predictions.shape == empty.macs.shape == (0,)


@pytest.mark.parametrize("name", list_models())
def test_a_call_runs_in_one_layout_chosen_by_its_size(name):
    """Calls of CHANNELS_LAST_MIN_BATCH images or more run channels-last (faster on a CPU), every chunk and
    every shrinking sub-batch of the call included; smaller calls and batch 1 keep the default layout."""
    model = tiny(name, (3, 32), "default")
    model.costs  # measured once, on one image: not a call of a path
    seen = {"first": [], "last": []}
    model.stages[0].register_forward_pre_hook(lambda module, args: seen["first"].append(args[0].is_contiguous(memory_format=torch.channels_last)))
    model.stages[-1].register_forward_pre_hook(lambda module, args: seen["last"].append(args[0].is_contiguous(memory_format=torch.channels_last)))
    never = [0.0] * (model.num_exits - 1)  # entropy 0 never fires: every sample reaches the last stage
    paths = {
        "plain": lambda x: run_plain(model, x),
        "every exit": lambda x: run_every_exit(model, x),
        "reference": lambda x: run_all_then_select(model, x, "entropy", never),
        "batched": lambda x: early_exit_batched(model, x, "entropy", never),
        "chunked": lambda x: early_exit_batched(model, x, "entropy", never, batch_size=16),
    }
    for n, channels_last in ((CHANNELS_LAST_MIN_BATCH + 6, True), (CHANNELS_LAST_MIN_BATCH - 1, False)):
        for path_name, path in paths.items():
            seen["first"].clear(), seen["last"].clear()
            path(images((3, 32), n=n))
            assert seen["first"] and seen["last"], path_name
            assert set(seen["first"]) == set(seen["last"]) == {channels_last}, (path_name, n)
    seen["first"].clear()
    early_exit_single(model, images((3, 32), n=CHANNELS_LAST_MIN_BATCH), "entropy", never)
    assert set(seen["first"]) == {False}


# How far a float32 score may move when the batch it is computed in shrinks. The exit heads and classifiers
# are matrix products (MKL's sgemm), and sgemm rounds a row differently with the number of rows in the call
# and the threads it splits them over (on this CPU: every row count below 16 at one thread, below ~30 at
# two); the batched path computes a later exit's head on the samples still in, so its logits differ from
# the reference's full-batch ones by a few float32 ulps (measured: 4e-8), and a score exactly on its
# threshold can fall on either side. 1e-5 is two orders of magnitude above that rounding and far below any
# gap between two images' scores that a threshold could be meant to separate.
FLOAT32_SCORE_ROUNDING = 1e-5


@pytest.mark.parametrize("name", list_models())
def test_float32_calls_agree_with_the_reference_except_within_rounding_of_a_threshold(name):
    """In float32, with each threshold exactly on one sample's score (a calibrated quantile can be), the
    batched path, whole or chunked, takes the reference's exit for every sample whose score is not within
    float32 rounding of the threshold where the two decisions part (see FLOAT32_SCORE_ROUNDING for why
    bit-for-bit agreement is not a claim any install can keep), and the same prediction wherever the exits
    agree. Large enough for channels-last."""
    torch.manual_seed(0)
    model = create_model(name, 5, 3, 32, width=WIDTH).eval()
    x = images((3, 32), n=CHANNELS_LAST_MIN_BATCH + 16).float()
    out = run_every_exit(model, x)
    for criterion in criteria.CRITERIA:
        score = criteria.scores(criterion, torch.stack(out.logits), torch.stack(out.gates)).double()
        thresholds = score.median(dim=1).values.tolist()  # a sample's own score at every early exit
        reference = run_all_then_select(model, x, criterion, thresholds)
        assert len(set(reference.exits.tolist())) >= 2
        for result in (early_exit_batched(model, x, criterion, thresholds),
                       early_exit_batched(model, x, criterion, thresholds, batch_size=16)):
            same = result.exits == reference.exits
            assert torch.equal(result.predictions[same], reference.predictions[same])
            for i in (~same).nonzero().flatten().tolist():
                parted = min(result.exits[i].item(), reference.exits[i].item())  # the exit where one fired
                assert abs(score[parted, i].item() - thresholds[parted]) <= FLOAT32_SCORE_ROUNDING, (criterion, i)
            assert same.double().mean() >= 0.95  # only the few samples on a threshold can part


@pytest.mark.parametrize("name", list_models())
def test_large_batches_still_equal_the_reference(name):
    """float64, thresholds between scores: channels-last calls agree with the reference like any other."""
    n = CHANNELS_LAST_MIN_BATCH + 6
    model = tiny(name, (3, 32), "default")
    x = images((3, 32), n=n)
    assert torch.allclose(run_plain(model, x), model.backbone(x), rtol=1e-12, atol=1e-12)
    for seed, criterion in enumerate(criteria.CRITERIA):
        thresholds = midpoint_thresholds(model, x, criterion, seed)
        reference = run_all_then_select(model, x, criterion, thresholds)
        for result in (early_exit_batched(model, x, criterion, thresholds),
                       early_exit_batched(model, x, criterion, thresholds, batch_size=CHANNELS_LAST_MIN_BATCH),
                       early_exit_single(model, x, criterion, thresholds)):
            assert torch.equal(result.exits, reference.exits) and torch.equal(result.predictions, reference.predictions)
        assert len(set(reference.exits.tolist())) >= 2


def test_a_model_without_early_exits_runs_every_path():
    model = create_model("vgg13", 4, exits=[], width=WIDTH).double().eval()
    x = images((3, 32), n=3)
    stream_in_ones = lambda model, x, criterion, thresholds: early_exit_stream(model, x, criterion, thresholds, batch_size=1)
    for path in (early_exit_single, early_exit_batched, early_exit_stream, stream_in_ones, run_all_then_select):
        result = path(model, x, "entropy", [])
        assert result.exits.tolist() == [0, 0, 0]
        assert torch.equal(result.predictions, run_plain(model, x).argmax(dim=-1))
        assert result.macs.tolist() == [model.costs.plain_macs] * 3
    assert early_exit_stream(model, x[:0], "entropy", []).exits.tolist() == []


def test_the_batch1_path_without_early_exits_returns_the_references_fields():
    """early_exit_single takes its own way for a network without early exits (no decisions): the same fields."""
    model = create_model("vgg13", 4, exits=[], width=WIDTH).double().train()
    x = images((3, 32), n=3)
    for batch in (x[:0], x[1:2], x, x.contiguous(memory_format=torch.channels_last)):
        got, reference = early_exit_single(model, batch, "entropy", 0.5), run_all_then_select(model, batch, "entropy", [])
        for field in EarlyExitResult._fields:
            assert torch.equal(getattr(got, field), getattr(reference, field)), field
            assert getattr(got, field).dtype == getattr(reference, field).dtype, field
    assert model.training
    with pytest.raises(ReproError, match="outside"):
        early_exit_single(model, x[:1], "entropy", 1.5)  # checked even though no exit reads it


def test_a_training_model_is_run_in_eval_mode_and_left_training():
    model = tiny("vgg13", (3, 32), "default").train()
    x = images((3, 32))
    thresholds = midpoint_thresholds(model.eval(), x, "maxprob", seed=0)
    expected = run_all_then_select(model, x, "maxprob", thresholds)
    model.train()
    got = early_exit_batched(model, x, "maxprob", thresholds)  # dropout would make this random in train mode
    assert torch.equal(got.exits, expected.exits) and model.training and model.classifier[1].training


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, x: early_exit_single(m, x[:, :1], "entropy", 0.5),
         "vgg13 was built for 3x32x32 inputs (channels x height x width); got 1x32x32"),
        (lambda m, x: early_exit_batched(m, x[..., :28, :28], "entropy", 0.5),
         "vgg13 was built for 3x32x32 inputs (channels x height x width); got 3x28x28"),
        (lambda m, x: run_plain(m, x[0]), "vgg13 was built for 3x32x32 inputs (channels x height x width); got a 3-d tensor"),
        (lambda m, x: early_exit_single(m, x, "entropy", 1.5),
         "threshold 1.5 is outside [0.0, 1.0], the range of every exit criterion"),
        (lambda m, x: early_exit_batched(m, x, "maxprob", [0.5, 0.5]),
         "got 2 thresholds for 9 early exits; give one, or one per early exit"),
        (lambda m, x: run_all_then_select(m, x, "margin", 0.5), "unknown criterion 'margin'; valid: entropy, gate, maxprob"),
        (lambda m, x: early_exit_batched(m, x, "gate", 0.5, batch_size=0), "batch_size must be a positive integer; got 0"),
        (lambda m, x: early_exit_stream(m, x, "gate", 0.5, batch_size=None), "batch_size must be a positive integer; got None"),
    ],
)
def test_bad_inference_arguments_raise_one_clear_line(call, message):
    model = create_model("vgg13", 10, width=WIDTH).eval()
    with pytest.raises(ValueError) as raised:
        call(model, torch.zeros(2, 3, 32, 32))
    assert str(raised.value) == message and isinstance(raised.value, ReproError)


@pytest.mark.parametrize("name", list_models())
def test_a_batch_in_pieces_equals_the_reference_and_does_the_same_work(name, monkeypatch):
    """float64: with pieces of a few samples (PIECE_BYTES lowered; on a CPU the real budget only splits large
    batches), early exit and the plain network give the reference's exits, predictions and logits, and do
    exactly the reference's MACs, the pieces' boundaries wherever they fall."""
    from repro.models import inference

    model = tiny(name, (3, 32), "default")
    x = images((3, 32), n=23)
    largest = max(max(pair) for pair in model.costs.activation_bytes)
    monkeypatch.setattr(inference, "PIECE_BYTES", 3 * largest)  # 3 samples where the maps are largest
    sizes = inference.piece_sizes(model, x.device)
    assert min(sizes) == 3 and max(sizes) > 3  # later, smaller maps take larger pieces
    assert inference.piece_sizes(model, torch.device("meta")) == [0] * model.num_exits  # a GPU: the batch whole
    assert torch.allclose(run_plain(model, x), model.backbone(x), rtol=1e-12, atol=1e-12)
    for seed, criterion in enumerate(criteria.CRITERIA):
        thresholds = midpoint_thresholds(model, x, criterion, seed)
        reference = run_all_then_select(model, x, criterion, thresholds)
        flops, pieces = counted_flops(early_exit_batched, model, x, criterion, thresholds)
        assert torch.equal(pieces.exits, reference.exits) and torch.equal(pieces.predictions, reference.predictions)
        assert flops == 2 * (reference.macs.sum().item() - skipped_gate_macs(model, reference.exits, criterion))
        assert len(set(reference.exits.tolist())) >= 2


def test_a_piece_that_leaves_whole_keeps_the_calls_layout(monkeypatch):
    """A large call runs channels-last from its first segment to its last, also when every sample of a piece
    leaves (an empty piece in torch.cat once turned the rest of the call back to NCHW)."""
    from repro.models import inference

    model = create_model("vgg13", 5, 3, 32, width=WIDTH).eval()
    x = images((3, 32), n=CHANNELS_LAST_MIN_BATCH + 6).float()
    largest = max(max(pair) for pair in model.costs.activation_bytes)
    monkeypatch.setattr(inference, "PIECE_BYTES", 10 * largest)
    assert inference._pieces(len(x), inference.piece_sizes(model, x.device)[0])[0] == slice(0, 10)
    calls = iter(range(10**6))
    real_fires = inference.fires

    def first_piece_fires(criterion, score, threshold):  # the first decision (exit 0's): the first piece's samples leave
        fired = real_fires(criterion, score, threshold)
        if next(calls) == 0:
            fired[:10] = True
        return fired

    monkeypatch.setattr(inference, "fires", first_piece_fires)
    layouts, real_segment = [], model.run_segment
    monkeypatch.setattr(model, "run_segment", lambda b, h: (layouts.append((b, h.is_contiguous(memory_format=torch.channels_last))),
                                                            real_segment(b, h))[1])
    result = early_exit_batched(model, x, "entropy", 0.0)  # nothing fires by entropy 0 but the forced first piece
    assert result.exits[:10].tolist() == [0] * 10 and (result.exits[10:] == model.num_exits - 1).all()
    assert {b for b, _ in layouts} == set(range(model.num_exits)) and all(channels_last for _, channels_last in layouts)


def test_pieces_are_near_equal_and_cover_the_batch():
    from repro.models.inference import _pieces

    assert _pieces(65, 64) == [slice(0, 32), slice(32, 65)]  # not 64 + a piece of 1
    assert _pieces(7, 0) == [slice(0, 7)] and _pieces(7, 7) == [slice(0, 7)] and _pieces(0, 3) == [slice(0, 0)]
    for n, size in [(100, 32), (256, 32), (23, 3)]:
        pieces = _pieces(n, size)
        lengths = [p.stop - p.start for p in pieces]
        assert pieces[0].start == 0 and pieces[-1].stop == n and all(a.stop == b.start for a, b in zip(pieces, pieces[1:]))
        assert max(lengths) <= size and max(lengths) - min(lengths) <= 1 and len(pieces) == -(-n // size)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_survivors_are_gathered_in_order_in_the_pieces_layout(layout):
    """gather_survivors equals boolean indexing of the joined pieces, keeps their memory layout (a later
    segment runs in the call's layout), returns None when no sample stays, and a single piece untouched."""
    from repro.models.inference import _pieces, gather_survivors

    torch.manual_seed(0)
    whole = torch.randn(23, 5, 4, 3, dtype=torch.float64)
    pieces = _pieces(len(whole), 8)
    outs = [whole[piece].contiguous(memory_format=layout) for piece in pieces]
    stay = torch.rand(len(whole)) < 0.5
    stay[8:16] = False  # a piece without survivors
    gathered = gather_survivors(outs, pieces, stay)
    assert torch.equal(gathered, whole[stay]) and gathered.is_contiguous(memory_format=layout)
    assert gather_survivors(outs, pieces, torch.zeros(len(whole), dtype=torch.bool)) is None
    one = whole.contiguous(memory_format=layout)
    assert gather_survivors([one], [slice(0, len(one))], torch.ones(len(one), dtype=torch.bool)) is one
    pieces = _pieces(15, 8)
    features = [torch.randn(piece.stop - piece.start, 6) for piece in pieces]  # 2-d outputs: rows as they are
    mask = torch.tensor([True, False] * 7 + [True])
    assert torch.equal(gather_survivors(features, pieces, mask), torch.cat(features)[mask])


@pytest.mark.parametrize("name", list_models())
def test_a_stream_equals_the_reference_and_runs_every_segment_on_full_batches(name, monkeypatch):
    """float64: the stream gives the reference's exits, predictions and MACs and does exactly the exits'
    work, and every segment runs the fewest calls its samples allow (ceil(reached / batch_size): full
    batches, one partial at most), whatever the batch size."""
    model = tiny(name, (3, 32), "default")
    x = images((3, 32), n=23)
    calls, real_segment = [], model.run_segment
    monkeypatch.setattr(model, "run_segment", lambda b, h: (calls.append((b, len(h))), real_segment(b, h))[1])
    for seed, criterion in enumerate(criteria.CRITERIA):
        thresholds = midpoint_thresholds(model, x, criterion, seed)
        reference = run_all_then_select(model, x, criterion, thresholds)
        reached = [(reference.exits >= b).sum().item() for b in range(model.num_exits)]
        for batch_size in (1, 4, 23, 50):
            calls.clear()
            flops, stream = counted_flops(early_exit_stream, model, x, criterion, thresholds, batch_size)
            assert torch.equal(stream.exits, reference.exits) and torch.equal(stream.predictions, reference.predictions)
            assert torch.equal(stream.macs, reference.macs)
            assert flops == 2 * (reference.macs.sum().item() - skipped_gate_macs(model, reference.exits, criterion))
            for b in range(model.num_exits):
                sizes = [size for segment, size in calls if segment == b]
                assert len(sizes) == -(-reached[b] // batch_size) and sum(sizes) == reached[b]
                assert sum(size < batch_size for size in sizes) <= 1
        assert len(set(reference.exits.tolist())) >= 2


def test_a_streams_waits_count_the_batches_that_entered_before_a_sample_was_decided():
    """Half the samples leave at exit 0, the rest at exit 1, whose segment runs once 3 of them wait: the
    k-th survivor of exit 0 goes in segment 1's (k // 3)-th batch, run in the step the batch's last member
    entered (the stream's end for an incomplete one); waited = that step - the sample's own."""
    model = tiny("vgg13", (3, 32), "default")
    x = images((3, 32), n=11)
    first = criteria.normalised_entropy(model(x).logits[0])
    thresholds = [first.median().item()] + [1.0] * (model.num_exits - 2)
    for batch_size in (1, 3, 4, 11):
        stream = early_exit_stream(model, x, "entropy", thresholds, batch_size=batch_size)
        survivors = (stream.exits == 1).nonzero().flatten().tolist()
        assert stream.exits.tolist() == [0 if score <= thresholds[0] else 1 for score in first.tolist()]
        assert 3 <= len(survivors) <= 8
        steps = -(-len(x) // batch_size)
        expected = [0] * len(x)
        for k, sample in enumerate(survivors):
            group = survivors[k // batch_size * batch_size : (k // batch_size + 1) * batch_size]
            ran = group[-1] // batch_size if len(group) == batch_size else steps - 1
            expected[sample] = ran - sample // batch_size
        assert stream.waited.tolist() == expected
        assert (batch_size in (1, len(x))) == (max(expected) == 0)  # batch 1 or one batch: nobody waits


def test_a_stream_runs_each_batch_in_the_layout_of_its_batch_size(monkeypatch):
    """A long stream of small batches stays in the default layout (channels-last is slower below
    CHANNELS_LAST_MIN_BATCH, and run_plain, its baseline, picks the layout from the batch); large batches
    run channels-last."""
    model = create_model("vgg13", 5, 3, 32, width=WIDTH).eval()
    x = images((3, 32), n=CHANNELS_LAST_MIN_BATCH + 6).float()
    layouts, real_segment = [], model.run_segment
    monkeypatch.setattr(model, "run_segment", lambda b, h: (layouts.append(h.is_contiguous(memory_format=torch.channels_last)
                                                                           and not h.is_contiguous()), real_segment(b, h))[1])
    early_exit_stream(model, x, "entropy", 0.0, batch_size=4)
    assert layouts and not any(layouts)
    layouts.clear()
    early_exit_stream(model, x, "entropy", 0.0, batch_size=CHANNELS_LAST_MIN_BATCH)
    assert layouts and all(layouts)

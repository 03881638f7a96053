"""toolkit.engines.ProgressBar on real ignite / MONAI engines: a tqdm bar on a terminal, nothing elsewhere."""

from __future__ import annotations

import io
import os
import pty
import select

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Accuracy
from monai.bundle import ConfigParser
from monai.engines import SupervisedTrainer

from toolkit.engines import ProgressBar
from toolkit.engines.progress import loss_of

LABELS = torch.tensor([0, 1, 1, 0])
PREDICTIONS = torch.nn.functional.one_hot(torch.tensor([0, 1, 0, 0]), 2).float()  # 3 of 4 right


def _engine() -> Engine:
    """Three iterations per epoch; the loss is 0.25 x the iteration number; accuracy 0.75 at each epoch's end."""

    def step(engine, batch):
        return {"loss": torch.tensor(0.25 * engine.state.iteration), "y_pred": batch[0], "y": batch[1]}

    engine = Engine(step)
    Accuracy(output_transform=lambda out: (out["y_pred"], out["y"])).attach(engine, "accuracy")
    return engine


def _finished_bars(text: str) -> list[str]:
    """The bars left on screen: the last redraw (after the last carriage return) of each bar's line."""
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n") if "%|" in line]


def test_forced_bar_shows_each_epoch_with_loss_and_end_of_epoch_accuracy():
    stream = io.StringIO()
    engine = _engine()
    bar = ProgressBar(force=True, file=stream)
    bar.attach(engine)
    assert engine.has_event_handler(bar._close, Events.EPOCH_COMPLETED)
    engine.run([(PREDICTIONS, LABELS)] * 3, max_epochs=2)

    text = stream.getvalue()
    assert "\r" in text  # tqdm redraws in place
    finished = _finished_bars(text)
    assert len(finished) == 2, text  # one bar per epoch, each kept
    assert finished[0].startswith("Epoch [1/2]: [3/3] 100%") and "accuracy=0.75, loss=0.75" in finished[0]
    assert finished[1].startswith("Epoch [2/2]: [3/3] 100%") and "accuracy=0.75, loss=1.5" in finished[1]


def test_not_forced_attaches_nothing():
    stream = io.StringIO()
    engine = _engine()
    bar = ProgressBar(force=False, file=stream)
    bar.attach(engine)
    assert not engine.has_event_handler(bar._close, Events.EPOCH_COMPLETED)
    engine.run([(PREDICTIONS, LABELS)] * 3, max_epochs=1)
    assert stream.getvalue() == "" and bar.pbar is None


def test_default_follows_whether_the_stream_is_a_terminal():
    primary, secondary = pty.openpty()
    with open(secondary, "w") as terminal, io.StringIO() as log_file:
        assert ProgressBar(file=terminal).enabled()
        assert not ProgressBar(file=log_file).enabled()
        engine = _engine()
        ProgressBar(file=terminal).attach(engine)
        engine.run([(PREDICTIONS, LABELS)] * 3, max_epochs=1)
        terminal.flush()
        shown = b""
        while select.select([primary], [], [], 0.2)[0]:  # all that reached the terminal (a few hundred bytes)
            shown += os.read(primary, 4096)
    os.close(primary)
    assert b"[3/3] 100%" in shown


def test_from_a_bundle_config_on_a_monai_trainer(capsys):
    """The bundle form: built by MONAI's ConfigParser, in a SupervisedTrainer's handler list, showing its loss
    (taken from the decollated per-item outputs, as MONAI trainers return them)."""
    parser = ConfigParser(
        {"bar": {"_target_": "toolkit.engines.ProgressBar", "force": True, "desc": "Training"}}
    )
    bar = parser.get_parsed_content("bar")
    torch.manual_seed(0)
    network = torch.nn.Linear(4, 2)
    data = [{"image": torch.randn(2, 4), "label": torch.tensor([0, 1])}] * 2
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
        loss_function=torch.nn.CrossEntropyLoss(),
        train_handlers=[bar],
    )
    trainer.run()
    assert isinstance(trainer.state.output, list)  # decollated: one dict per item
    [finished] = _finished_bars(capsys.readouterr().err)
    assert finished.startswith("Training: [2/2] 100%") and "loss=" in finished


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (0.5, {"loss": 0.5}),
        (torch.tensor(0.5), {"loss": 0.5}),
        ({"loss": torch.tensor(0.5), "pred": torch.zeros(2)}, {"loss": 0.5}),
        ([{"loss": torch.tensor(0.5)}, {"loss": torch.tensor(0.5)}], {"loss": 0.5}),
        ([{"pred": torch.zeros(2)}], {}),  # a MONAI evaluator: no loss
        ((torch.zeros(2, 3), torch.zeros(2)), {}),  # ignite's (y_pred, y)
    ],
)
def test_loss_of(output, expected):
    assert loss_of(output) == expected

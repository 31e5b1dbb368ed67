"""The scheduler reads one topic, and every input it handles is carried there.

A batch sends its emits without waiting for its state writes (`Shell._flush`). That is safe
only because whatever an emit causes comes back on the same partition of the same topic,
after the record that caused it (the package docstring): a second input topic would let an
answer be read before its cause is applied again after a crash.
"""

from __future__ import annotations

from pathlib import Path

from cadenza_common import events as ev
from cadenza_scheduler.app import create_app
from cadenza_scheduler.domain import topic_for
from cadenza_scheduler.settings import Settings

INPUTS = (
    ev.ExecutionRequested,
    ev.CancelRequested,
    ev.TimerFired,
    ev.SignalReceived,
    ev.ChildExecutionFinished,
    ev.StepSucceeded,
    ev.StepFailed,
)


def test_the_agent_reads_executions_commands_alone(tmp_path: Path) -> None:
    scheduler = create_app(Settings(data_dir=str(tmp_path)))

    (agent,) = scheduler.app.agents.values()

    assert agent.channel.topics == (ev.Topics().executions_commands,)


def test_every_input_and_every_command_the_scheduler_sends_itself_is_on_that_topic() -> None:
    commands = ev.TOPIC_EVENTS[ev.Topic.EXECUTIONS_COMMANDS]
    elsewhere = {
        cls
        for topic, classes in ev.TOPIC_EVENTS.items()
        if topic not in (ev.Topic.EXECUTIONS_COMMANDS, ev.Topic.EXECUTIONS_EVENTS)
        for cls in classes
    }

    assert set(INPUTS) <= set(commands)
    assert not elsewhere & set(INPUTS)  # no other topic carries an input
    for cls in (
        ev.ExecutionRequested,
        ev.TimerFired,
        ev.CancelRequested,
        ev.ChildExecutionFinished,
    ):
        assert topic_for(cls.model_construct()) is ev.Topic.EXECUTIONS_COMMANDS

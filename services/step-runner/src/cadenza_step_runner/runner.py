"""The steps.ready consumer's record handler: decode, run the step, answer the scheduler."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord

from cadenza_common.events import StepReady, Topics
from cadenza_common.kafka import DeadLetters, PoisonRecord, decode, encode, traceparent_of
from cadenza_step_runner.handlers import StepHandler

SOURCE = "/cadenza/step-runner"


class StepRecords:
    """Handles one steps.ready record; finished once the answer is acknowledged by Kafka."""

    def __init__(
        self,
        handler: StepHandler,
        producer: AIOKafkaProducer,
        topics: Topics,
        dead_letters: DeadLetters,
    ) -> None:
        self._handler = handler
        self._producer = producer
        self._topic = topics.executions_commands
        self._dead_letters = dead_letters

    async def __call__(self, record: ConsumerRecord[Any, Any]) -> None:
        """Run the record's step and publish its StepSucceeded/StepFailed."""
        try:
            event = decode(record.value, record.headers)
        except PoisonRecord as exc:
            await self._dead_letters.send(record, str(exc))
            return
        if not isinstance(event, StepReady):
            await self._dead_letters.send(record, f"{type(event).__name__} is not a StepReady")
            return
        traceparent = traceparent_of(record)
        completion = await self._handler.handle(event, traceparent)
        msg = encode(completion, source=SOURCE, traceparent=traceparent)
        delivery = await self._producer.send(
            self._topic, msg.value, key=msg.key, headers=msg.headers
        )
        await delivery

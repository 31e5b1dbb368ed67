"""Cadenza scheduler service: a faust-streaming app around the pure `domain.decide()`.

What it does: one agent (concurrency 1) reads `executions.commands`, the one input topic:
requests, cancels, signals, timers, children's ends and the runners' and approvals' step
outcomes, keyed by execution id. It keeps each execution in the Faust table `executions`
(key: execution id, value: JSON bytes, see `codec`), calls `decide(state, event, now)` and
sends what it emits to `steps.ready`, `executions.events` or `executions.commands`, keyed
by execution id.

One input topic is what lets a batch's state writes and emits go to the broker together:
everything an emit causes comes back on the same partition as the record that caused it,
after it (see "No lost emits" below). With step outcomes on a topic of their own, an
answer could be read before the record that asked for it is applied again after a
crash, so the emits had to wait for the state to be durable: two round trips a batch.

Guarantees we rely on, and why they hold:

- At-least-once input, no Kafka transactions (faust's EOS has open bugs #517/#323). Faust
  commits a source offset only after the record was acked, and the agent acks a batch's
  records only once the shell handled the batch. We do NOT use Faust's changelog path: its
  producer buffer is drained one record per event-loop turn (40-60 ms per write under
  load) and its commit-time flush gives up after 0.1 s. The table class
  (`app.DurableTable`) only marks changed keys dirty; the shell calls `persist(keys)`,
  which sends those keys' values to the changelog and returns when the broker has them,
  while the emits the new states caused are sent alongside. So a committed offset implies
  the state behind it is durable, and an emit whose state is not can only be followed,
  on its partition, by the uncommitted record that made it (see below).
- Partitions taken over without a committed offset are rewound to their beginning before
  Faust resumes them (faust-streaming #629: records fetched during a rebalance are dropped
  while the client's position moves past them, and Faust only seeks back partitions with
  a committed offset). Found by the scale-out test; see `app._rewind_uncommitted`, called
  by `app._Recovery` after Faust's own seek.
- Input partitions are seeked to their committed offsets before they resume after a
  rebalance, and nothing is awaited between resuming them and Faust's flow control
  clearing the streams' queues (`app._Recovery`). In Faust's own order, records fetched
  during the seek were cleared from the queues unacked while the seek reset the read
  offsets under the batch being delivered, so the commit moved past them as a "gap":
  after a restart with answers waiting, runs of completions were never applied. Found by
  the scheduler SIGKILL fault test; a gap on an input partition is logged as a warning.
- The input topic is fetched by a loop of our own (`intake.Intake`), not by aiokafka's
  fetcher and Faust's `getmany` (~0.6 ms of the main thread a fetch): one fetch a broker
  in flight for the partitions Faust has active, at the positions aiokafka keeps (a seek
  meanwhile wins; a position moves past records before they are handed over, as
  aiokafka's does), its records through `app._take` (gaps, commit cadence) straight to
  the agent's inbox (`app.Inbox`), stopping when the flow stops or the generation
  changes, as Faust's `getmany` does; the rebalance that follows seeks back. aiokafka's
  fetcher leaves those partitions to it (`intake.leave_to_intake`) but still resets
  their offsets; a round that fails is logged and retried, never ended quietly.
- The inbox, not Faust's conductor, channel and stream iterator (~13 % of the saturated
  main thread), hands the records to the agent, and keeps what those gave: a record
  waits while the flow is suspended for a rebalance, one of an older consumer
  generation is dropped, the others are tracked as unacked (a rebalance waits for the
  batch holding them; their acks commit), and Faust's flow control clears the inbox
  when a rebalance starts and when the flow resumes, so no record of a revoked
  partition is handled after the revocation. The other records (the table's changelog
  while it recovers) still come through Faust's own drain loop (`app._drain_messages`)
  to the conductor, a delivery that need not wait run at once, one that waits finished
  as Faust does, abandoned when the flow stops.
- Faust's consumer service runs on the app's event loop, not in a thread of its own
  (`app._consumer_class`): fetches, commits and seeks are direct calls, rebalance
  callbacks are tasks on the same loop. aiokafka's heartbeats therefore share the loop
  with the agent; nothing holds it for long (a batch takes milliseconds, `Shell.recovered`
  yields every 1,000 keys), far inside the session timeout.
- The changelog writes and the emits go out in produce requests the scheduler builds
  itself (`produce.Producer`, on the client of the producer Faust started), not through
  aiokafka's accumulator and sender (twice the main thread's time a batch). It keeps what
  those gave us: one request a broker in flight, so a partition's batches are stored in
  the order they were handed over, also across a retry; retriable errors retried (with a
  metadata refresh) until a delivery timeout, any other error failing the batch's future,
  so `persist` and the sends raise and the shell retries the whole flush. Not idempotent:
  a retried request the broker had stored is stored twice, which at least once allows.
  Their responses (v5-v7) are decoded directly too.
- The intake and aiokafka's fetcher build `fetch.DirectFetchRequest`s (`fetch.install()`
  replaces the name in aiokafka's fetcher module): at v11 they encode themselves and
  decode their response directly, to the same bytes and values as aiokafka's generic
  codec (the unit tests compare both), in a fifth of the time; other versions use
  aiokafka's codec.
- Concurrency 1 (faust #606: with concurrency > 1 offsets can be committed past an
  unfinished record). One agent instance handles all assigned partitions in order.
- The table changes only when a new value is assigned (`table[key] = value`); we never
  mutate a value in place (decide() returns a new state; we store new bytes).
- A raising agent is restarted by its supervisor and the record is skipped, so
  `Shell.on_record` catches everything: undecodable records (PoisonRecord) and records
  whose handling raised go to the DLQ with the `dlq_*` headers of `DeadLetters`. Sends
  are retried with backoff before a record is given up to the DLQ.

No lost emits across a crash (the outbox). The agent takes records in batches
(`Inbox.batches`: it acks a batch's records only after the shell handled it) and, for
each batch:
  1. per record that changes something: `table[key] = {state: new, outbox: emits}` (the
     outbox accumulates when a batch holds several records of one execution);
  2. `persist` those keys and, at the same time,
  3. send every emit, in order (the records of a partition go to the broker as one
     batch, in their order, with the state writes: `app.send_records`); wait until the
     broker has both, one round trip per batch;
  4. `table[key] = {state: new, outbox: []}`, held back up to `write_delay_s` (1 s) so the
     execution's next transition usually replaces it, then sent with the next batch's
     writes, or by the timer task once no batch has written for `write_delay_s`;
     everything left is sent at revocation and shutdown.
     A crash before that only resends events consumers already have.
The table's changelog partition is computed from the key (`partition_of`), not from
Faust's "current event", because a batch mixes partitions.
A state is stored without its workflow spec and sub-workflow bundle (most of its bytes,
and they never change): each is a table entry of its own, once a partition (`specs`),
written with the first state of that partition that names it and persisted ahead of it in
step 2, so both are in the same record batch of the same changelog partition and recover
together; the last state naming it takes it along when it is deleted.
A crash after 2 and before 4 leaves the outbox in the changelog. On partition assignment,
after recovery, the shell resends every non-empty outbox of the partitions it owns
(remembering which keys it resent), and the next record for such a key resends it
again unless that was already done, then clears it. The re-delivered input itself is a
duplicate for decide() (state already advanced) and emits nothing. A crash after 3 but
before 2 leaves emits whose state was lost: the input records of the batch were not
committed, so they are applied again to the restored state and emit the same events.
Everything those emits caused (a runner's or an approver's answer, a child's
ChildExecutionFinished, a TimerFired) is written to `executions.commands` keyed by the
same execution id, so it sits after the record that caused it in the same partition and
is read after that record was applied again: decide() never sees an answer to an attempt
its state does not know yet.
decide() is deterministic in ids (event ids derive from the execution id and a counter),
so re-sent events carry the same event ids and seq as the first ones — consumers dedupe
by event id. Duplicated StepReady are harmless (the runner sends
an Idempotency-Key; decide() ignores a second completion of the same attempt).

Durable timers: due times live in the state (`ExecutionState.timers`); the stored value
repeats them so a rebalance rebuilds the in-memory heap (`timers.TimerHeap`) from
`orjson.loads` alone. A background task sends `TimerFired` for due timers to
`executions.commands` keyed by the execution id, so the agent applies it in order;
decide() ignores stale ones, so firing twice (e.g. around a rebalance) is harmless.

Retention: a finished execution gets a shell-only timer (`cadenza:retention`); when it
fires, a TimerFired with that id reaches the agent, which deletes the key (a tombstone
in the changelog). decide() never sees that timer id.

Memory: the process keeps a parsed state for every cached execution. Python's garbage
collector is tuned for that (`heap`): larger thresholds, its passes run by the agent
between batches (when a batch's objects are gone) rather than in the middle of one,
and everything alive once the partitions are recovered is frozen out of its passes;
pauses are in `cadenza_scheduler_gc_pause_seconds`.

Sub-workflows: the trigger-api attaches every referenced workflow's snapshot to the
ExecutionRequested (`sub_workflows`, resolved recursively at execute time); decide() keeps
that bundle in the state and starts children from it, so the scheduler needs no database.
"""

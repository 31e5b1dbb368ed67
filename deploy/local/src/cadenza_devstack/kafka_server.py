"""A single-node Apache Kafka broker in KRaft mode, from the official Maven Central jars."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

from cadenza_devstack.state import (
    REPO_ROOT,
    StackState,
    free_port,
    pid_alive,
    port_open,
    require_tool,
)

POM = REPO_ROOT / "deploy" / "local" / "kafka" / "pom.xml"
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
DEFAULT_HEAP = "-Xms512m -Xmx1g"

SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data_dir}
num.partitions=12
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=72
log.segment.bytes=67108864
"""

LOG4J_PROPERTIES = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
"""


class KafkaServer:
    """Fetches, configures, starts and stops the local broker under `<state>/kafka`."""

    def __init__(self, state_dir: Path, state: StackState) -> None:
        self.home = state_dir / "kafka"
        self.lib = self.home / "lib"
        self.data = self.home / "data"
        self.log_file = state_dir / "logs" / "kafka.log"
        self.state = state

    def running(self) -> bool:
        return pid_alive(self.state.kafka_pid) and port_open(self.state.kafka_port)

    def fetch_jars(self) -> None:
        """Copy the pinned broker jars from Maven Central into `lib/` (once)."""
        if self.lib.exists() and any(self.lib.glob("kafka_2.13-*.jar")):
            return
        mvn = require_tool(
            "mvn", "Install Maven (Debian/Ubuntu: `apt-get install -y maven`) to fetch Kafka."
        )
        tmp = self.home / "lib.tmp"
        subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-Dstyle.color=never",
                "-f",
                str(POM),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={tmp}",
            ],
            check=True,
        )
        tmp.replace(self.lib)

    def _java(self) -> str:
        return require_tool(
            "java",
            "Install Java 17+ (Debian/Ubuntu: `apt-get install -y openjdk-17-jre-headless`).",
        )

    def configure(self) -> Path:
        """Write server.properties (choosing ports once) and format storage on first start."""
        if not self.state.kafka_port or port_open(self.state.kafka_port):
            self.state.kafka_port = int(os.environ.get("CADENZA_KAFKA_PORT") or free_port())
        if not self.state.kafka_controller_port or port_open(self.state.kafka_controller_port):
            self.state.kafka_controller_port = free_port()
        props = self.home / "server.properties"
        props.write_text(
            SERVER_PROPERTIES.format(
                port=self.state.kafka_port,
                controller_port=self.state.kafka_controller_port,
                data_dir=self.data,
            )
        )
        (self.home / "log4j.properties").write_text(LOG4J_PROPERTIES)
        if not (self.data / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            subprocess.run(
                [
                    self._java(),
                    f"-Dlog4j.configuration=file:{self.home}/log4j.properties",
                    "-cp",
                    f"{self.lib}/*",
                    STORAGE_TOOL,
                    "format",
                    # `=` form: a random id may start with "-"
                    f"--cluster-id={cluster_id}",
                    "-c",
                    str(props),
                    "--ignore-formatted",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        return props

    def start(self, timeout: float = 90.0) -> None:
        """Start the broker in the background and wait until its port answers."""
        self.fetch_jars()
        props = self.configure()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        heap = os.environ.get("CADENZA_KAFKA_HEAP", DEFAULT_HEAP).split()
        cmd = [
            self._java(),
            *heap,
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.home}/log4j.properties",
            "-cp",
            f"{self.lib}/*",
            MAIN_CLASS,
            str(props),
        ]
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.state.kafka_pid = proc.pid
        deadline = time.monotonic() + timeout
        while not port_open(self.state.kafka_port):
            if proc.poll() is not None:
                raise RuntimeError(f"Kafka exited with {proc.returncode}; see {self.log_file}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Kafka did not open its port in {timeout}s; see {self.log_file}"
                )
            time.sleep(0.3)

    def stop(self, timeout: float = 30.0, kill: bool = False) -> None:
        """Stop the broker: SIGTERM (or SIGKILL when `kill`), then SIGKILL after `timeout`."""
        pid = self.state.kafka_pid
        if not pid_alive(pid):
            self.state.kafka_pid = None
            return
        assert pid is not None
        os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.1)
        self.state.kafka_pid = None

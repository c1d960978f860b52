"""The ServerApp's sites: waiting for the SuperNodes, their first replies (who each site is,
its data's facts, or its policy's refusal), and one way to message them afterwards."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from data.database import encoder_mismatch
from fl.policy import Refusal
from fl.records import record_int
from fl.settings import SettingsError


class Sites:
    """The connected sites: which SuperNode serves which client, and one way to message them
    (every reply must come back, without error, within the timeout)."""

    def __init__(self, grid: Grid, node_of: dict[int, int], reply_timeout: float):
        self.grid = grid
        self.node_of = node_of
        self.client_of = {node: cid for cid, node in node_of.items()}
        self.reply_timeout = reply_timeout

    def ask(
        self,
        client_ids: Sequence[int],
        message_type: str,
        content: Callable[[int], RecordDict],
        group: str,
    ) -> dict[int, RecordDict]:
        """Send `content(client id)` to each client; their replies by client id."""
        messages = [
            Message(content(cid), self.node_of[cid], message_type, group_id=group)
            for cid in client_ids
        ]
        start = time.perf_counter()
        replies = list(self.grid.send_and_receive(messages, timeout=self.reply_timeout))
        seconds = time.perf_counter() - start
        print(f"{group}: {message_type}, {len(replies)} replies in {seconds:.1f} s", flush=True)
        out = {}
        for reply in replies:
            cid = self.client_of[reply.metadata.src_node_id]
            if reply.has_error():
                raise RuntimeError(
                    f"{message_type} ({group}): client {cid} failed: {reply.error.reason}"
                )
            out[cid] = reply.content
        missing = sorted(set(client_ids) - set(out))
        if missing:
            raise TimeoutError(
                f"{message_type} ({group}): no reply from clients {missing} within "
                f"{self.reply_timeout:.0f} s (reply-timeout-s)"
            )
        return out


def connect(
    grid: Grid, n_sites: int, node_timeout: float, reply_timeout: float
) -> tuple[Sites, dict[int, dict]]:
    """Wait for `n_sites` SuperNodes and ask each which client it serves and what its data is
    (names, hashes and shapes), or whether it refuses the run: every refusal stops the run with
    one message. Returns the sites and each one's reply by client id."""
    deadline = time.monotonic() + node_timeout
    while len(nodes := sorted(grid.get_node_ids())) < n_sites:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{len(nodes)} of {n_sites} SuperNodes connected within {node_timeout:.0f} s "
                f"(node-timeout-s)"
            )
        time.sleep(0.5)
    messages = [Message(RecordDict(), node, "query", group_id="hello") for node in nodes]
    replies = list(grid.send_and_receive(messages, timeout=reply_timeout))
    info: dict[int, dict] = {}
    encoders: dict[int, dict] = {}
    refusals = []
    for reply in replies:
        if reply.has_error():
            raise RuntimeError(
                f"SuperNode {reply.metadata.src_node_id} failed to start: {reply.error.reason}"
            )
        client = reply.content.metric_records["client"]
        hello: dict[str, Any] = dict(client)
        cid = record_int(client, "id")
        if cid in info:
            raise SettingsError(f"two SuperNodes claim client-id {cid}")
        if "refusal" in reply.content.config_records:
            rule = str(reply.content.config_records["refusal"]["rule"])
            refusals.append(f"client {cid}: {rule}")
        else:
            record = reply.content.config_records["facts"]
            hello["facts"] = {k: json.loads(str(v)) for k, v in record.items()}
            if "encoder" in reply.content.config_records:
                encoders[cid] = json.loads(str(reply.content.config_records["encoder"]["facts"]))
        info[cid] = {**hello, "node": reply.metadata.src_node_id}
    if refusals:
        raise Refusal("the run is refused by its sites' policies: " + "; ".join(sorted(refusals)))
    if mismatch := encoder_mismatch(encoders):  # embeddings made differently do not pool
        raise Refusal(f"the run is refused: {mismatch}")
    if len(info) != n_sites:
        raise SettingsError(f"{len(info)} SuperNodes answered, the run needs {n_sites}")
    sites = Sites(grid, {cid: int(h["node"]) for cid, h in info.items()}, reply_timeout)
    return sites, info

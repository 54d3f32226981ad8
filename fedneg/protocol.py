"""Record keys of a round's messages, shared by the ServerApp and the ClientApp.

Server -> phone (train message): `arrays` (FE state), `config` (ConfigRecord with
`fedneg-config`, the experiment config as JSON, and `server-round`), and per negative
source `negatives.<name>` (ArrayRecord) plus `negatives.<name>.info` (ConfigRecord).
Phone -> server: `arrays` (FE state) and `metrics` (MetricRecord of scalars).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedneg.negatives.base import SourcePayload

NUM_EXAMPLES = "num-examples"
PHONE_ID = "phone-id"


def negatives_key(source_name: str) -> str:
    """RecordDict key of a source's arrays; its info goes under the same key plus `.info`."""
    return f"negatives.{source_name}"


def payload_to_records(name: str, payload: SourcePayload) -> dict[str, ArrayRecord | ConfigRecord]:
    arrays = ArrayRecord({key: Array(np.ascontiguousarray(value)) for key, value in payload.arrays.items()})
    return {negatives_key(name): arrays, f"{negatives_key(name)}.info": ConfigRecord(dict(payload.info))}


def payload_from_records(name: str, content: RecordDict) -> SourcePayload | None:
    """Read a source's payload back from a round message, or None when the round has none."""
    key = negatives_key(name)
    if key not in content:
        return None
    arrays = {item: array.numpy() for item, array in content.array_records[key].items()}
    info = dict(content.config_records[f"{key}.info"]) if f"{key}.info" in content else {}
    return SourcePayload(arrays=arrays, info=info)



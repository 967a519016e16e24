"""Sans-IO wire layer: bytes in, frames out; frames in, bytes out.

Nothing here touches a socket, a clock or Twisted. Transports feed it bytes
and write what it returns; doc/protocol.md is the contract it implements.
"""

from .codec import decode_cbor, decode_cbor_batch, decode_json, encode_cbor, encode_json
from .encode import MessageTemplate, OutFrame, cbor_array, json_array
from .errors import BadFrame, DecodeError, FrameTooLarge, ProtocolError
from .frames import (
    PRESENCE_STATES,
    Ack,
    Bye,
    Frame,
    Hello,
    History,
    Join,
    Leave,
    Ping,
    Pong,
    PresenceReport,
    Probe,
    Send,
    Unwatch,
    Watch,
    parse_frame,
    valid_device,
    valid_room,
    valid_user,
)
from .framing import FrameSplitter, frame, frame_many
from .limits import DEFAULT_LIMITS, Limits

__all__ = [
    "DEFAULT_LIMITS",
    "PRESENCE_STATES",
    "Ack",
    "BadFrame",
    "Bye",
    "DecodeError",
    "Frame",
    "FrameSplitter",
    "FrameTooLarge",
    "Hello",
    "History",
    "Join",
    "Leave",
    "Limits",
    "MessageTemplate",
    "OutFrame",
    "Ping",
    "Pong",
    "PresenceReport",
    "Probe",
    "ProtocolError",
    "Send",
    "Unwatch",
    "Watch",
    "cbor_array",
    "decode_cbor",
    "decode_cbor_batch",
    "decode_json",
    "encode_cbor",
    "encode_json",
    "frame",
    "frame_many",
    "json_array",
    "parse_frame",
    "valid_device",
    "valid_room",
    "valid_user",
]

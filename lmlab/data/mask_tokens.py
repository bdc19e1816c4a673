"""The special tokens of a masked-LM encoder (mask, cls, sep, pad, unk): a view of
:mod:`lmlab.data.special`, where every role's names and the lookups live."""

from __future__ import annotations

from lmlab.data.special import ROLE_NAMES as _ALL_ROLES
from lmlab.data.special import special_ids, special_token

ROLE_NAMES: dict[str, tuple[str, ...]] = {r: _ALL_ROLES[r] for r in ("mask", "cls", "sep", "pad", "unk")}

__all__ = ["ROLE_NAMES", "special_ids", "special_token"]

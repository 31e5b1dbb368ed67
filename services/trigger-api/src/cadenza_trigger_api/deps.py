"""Annotated dependencies the routes declare: the context and the caller with a permission."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query

from cadenza_trigger_api.auth import Permission, Principal, require
from cadenza_trigger_api.context import AppContext, get_context

Ctx = Annotated[AppContext, Depends(get_context)]
Reader = Annotated[Principal, Depends(require(Permission.READ))]
Editor = Annotated[Principal, Depends(require(Permission.EDIT))]
Executor = Annotated[Principal, Depends(require(Permission.EXECUTE))]
Approver = Annotated[Principal, Depends(require(Permission.APPROVE))]
Admin = Annotated[Principal, Depends(require(Permission.ADMIN))]
Limit = Annotated[int | None, Query(ge=1, le=1000, description="page size")]
Cursor = Annotated[
    str | None, Query(max_length=500, description="`nextCursor` of the previous page")
]

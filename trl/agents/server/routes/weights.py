"""The trainer's weight sync: `POST /weights/{init,start,update,finish,abort,lora}` run one phase on every replica
(`../weight_sync.py`); `GET /weights` is the sync state, `GET /weights/layout` the ranks of an NCCL group.
Control plane: bearer token when one is set.

Bodies are the models of `protocol.py` (a missing or mistyped field is a 400 `WeightSyncError` naming it).
Not here: the phases, deadlines and quarantine (`WeightSync`), the trainer's client (`trl/agents/client.py`).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..protocol import AbortBody, InitBody, LoraBody, UpdateBody, WeightsBody
from .deps import gateway_of, require_token, weights_body


router = APIRouter(dependencies=[Depends(require_token)])


@router.post("/weights/init")
async def weights_init(request: Request) -> JSONResponse:
    body = await weights_body(request, InitBody)
    return JSONResponse(await gateway_of(request).weights.init(body.init_info))


@router.post("/weights/start")
async def weights_start(request: Request) -> JSONResponse:
    await weights_body(request, WeightsBody)  # nothing to read, but a malformed body is still an error
    return JSONResponse(await gateway_of(request).weights.start())


@router.post("/weights/update")
async def weights_update(request: Request) -> JSONResponse:
    body = await weights_body(request, UpdateBody)
    return JSONResponse(await gateway_of(request).weights.update(body.update_info))


@router.post("/weights/finish")
async def weights_finish(request: Request) -> JSONResponse:
    await weights_body(request, WeightsBody)
    return JSONResponse(await gateway_of(request).weights.finish())


@router.post("/weights/abort")
async def weights_abort(request: Request) -> JSONResponse:
    body = await weights_body(request, AbortBody)
    return JSONResponse(await gateway_of(request).weights.abort(body.reason_text))


@router.post("/weights/lora")
async def weights_lora(request: Request) -> JSONResponse:
    body = await weights_body(request, LoraBody)
    return JSONResponse(await gateway_of(request).weights.load_lora(body.lora_path, body.lora_name))


@router.get("/weights")
async def weights_status(request: Request):
    return gateway_of(request).weights.status()


@router.get("/weights/layout")
async def weights_layout(request: Request):
    """The weight-transfer group a group init would form now (ranks per replica, world size)."""
    return await gateway_of(request).weight_layout()

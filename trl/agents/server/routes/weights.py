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


# phase -> (its body model, what it runs on the gateway's `WeightSync`); each is `POST /weights/{phase}`
PHASES = {
    "init": (InitBody, lambda weights, body: weights.init(body.init_info)),
    "start": (WeightsBody, lambda weights, body: weights.start()),
    "update": (UpdateBody, lambda weights, body: weights.update(body.update_info)),
    "finish": (WeightsBody, lambda weights, body: weights.finish()),
    "abort": (AbortBody, lambda weights, body: weights.abort(body.reason_text)),
    "lora": (LoraBody, lambda weights, body: weights.load_lora(body.lora_path, body.lora_name)),
}


def _phase_route(body_model: type[WeightsBody], run):
    async def route(request: Request) -> JSONResponse:
        # the body is parsed even where nothing is read from it: a malformed body is still an error
        body = await weights_body(request, body_model)
        return JSONResponse(await run(gateway_of(request).weights, body))

    return route


for _name, (_body, _run) in PHASES.items():
    router.add_api_route(f"/weights/{_name}", _phase_route(_body, _run), methods=["POST"], name=f"weights_{_name}")


@router.get("/weights")
async def weights_status(request: Request):
    return gateway_of(request).weights.status()


@router.get("/weights/layout")
async def weights_layout(request: Request):
    """The weight-transfer group a group init would form now (ranks per replica, world size)."""
    return await gateway_of(request).weight_layout()

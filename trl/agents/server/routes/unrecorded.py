"""Unrecorded OpenAI traffic (evaluation, smoke tests): `GET /v1/models`, `POST /v1/chat/completions`,
`POST /v1/completions`, forwarded byte for byte (streams included) to the least busy replica.

Not here: recording (`recorded.py`: only session URLs are recorded), any checking of the body (vLLM answers).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from .deps import gateway_of


router = APIRouter()


@router.get("/v1/models")
async def models(request: Request):
    return await gateway_of(request).forward(request, "models")


@router.post("/v1/chat/completions")
async def chat(request: Request):
    return await gateway_of(request).forward(request, "chat/completions")


@router.post("/v1/completions")
async def completions(request: Request):
    return await gateway_of(request).forward(request, "completions")

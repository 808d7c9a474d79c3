"""REST routes under /dreambooth-tab/v1/ on a FastAPI app (the WebUI's, or the standalone server's).

Bad input answers 4xx with {"error": message, "field": name}; a running job or a model locked by another
process answers 409, a body over 1 MB 413, a full disk 507. Paths in a request must lie under the models
folder or a data root (pathpolicy). When the host has API auth (A1111 `--api-auth user:pass[,user:pass]`;
standalone `serve --api-auth`), the routes require the same HTTP Basic login.
Works with fastapi 0.94 / pydantic 1 (A1111) and current fastapi / pydantic 2: bodies are read as plain JSON.
(No `from __future__ import annotations` here: FastAPI must see the real Request/Depends annotations.)
"""
from typing import Callable

from .errors import DreamboothError

PREFIX = "/dreambooth-tab/v1"  # ours alone: the older Dreambooth extension owns /dreambooth/
USE_HOST_AUTH = "<host>"  # register_routes' default: the host's API auth (host.host_api_auth())
MAX_BODY = 1024 * 1024  # bytes; larger bodies answer 413 unread
MAX_MESSAGE = 500  # characters of an error message or field name sent back


def _status_code(error: DreamboothError) -> int:
    if error.field == "job":
        return 409
    if error.field == "disk":
        return 507
    if error.field in ("model_name", "source") and "does not exist" in str(error):
        return 404
    return 400


def register_routes(app, api_auth: str | None = USE_HOST_AUTH) -> None:
    """Add the routes to `app`. `api_auth`: "user:pass[,user:pass]", None = open, default = the host's
    (WebUI --api-auth; standalone env DREAMBOOTH_API_AUTH)."""
    from fastapi import Depends, HTTPException, Request
    from fastapi.responses import JSONResponse
    from fastapi.security import HTTPBasic, HTTPBasicCredentials
    from starlette.concurrency import run_in_threadpool

    from .platform import host

    users = host.parse_api_auth(host.host_api_auth() if api_auth == USE_HOST_AUTH else api_auth)
    basic = HTTPBasic(auto_error=False)

    def check_auth(credentials: HTTPBasicCredentials = Depends(basic)):
        username, password = (credentials.username, credentials.password) if credentials else (None, None)
        if host.check_api_auth(username, password, users):
            return
        raise HTTPException(status_code=401, detail="Incorrect username or password",
                            headers={"WWW-Authenticate": "Basic"})

    def too_large():
        return JSONResponse({"error": f"request body too large: at most {MAX_BODY // 1024} KB", "field": "body"},
                            status_code=413)

    async def read_body(request: Request) -> bytes | None:
        """The body, or None when it is over MAX_BODY (judged by Content-Length, else while reading)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:
            return None
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                return None
        return bytes(raw)

    def error_reply(error: DreamboothError):
        message, field = str(error), error.field
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE] + "…"
        return JSONResponse({"error": message, "field": field if field is None else field[:100]},
                            status_code=_status_code(error))

    def route(path: str, method: str, fn: Callable, needs_body: bool = False):
        async def endpoint(request: Request):
            args = dict(request.query_params)
            if needs_body:
                raw = await read_body(request)
                if raw is None:
                    return too_large()
                if raw.strip():
                    try:
                        import json

                        body = json.loads(raw)
                    except ValueError:
                        return JSONResponse({"error": "request body is not valid JSON"}, status_code=400)
                    if not isinstance(body, dict):
                        return JSONResponse({"error": "request body must be a JSON object"}, status_code=400)
                    args.update(body)
            try:
                result = await run_in_threadpool(fn, args)
            except DreamboothError as error:
                return error_reply(error)
            except Exception as error:  # a bug: still JSON, details in the server log
                import logging
                import traceback

                logging.getLogger("dreambooth").error("dreambooth API failed\n%s", traceback.format_exc())
                return JSONResponse({"error": f"internal error: {type(error).__name__}: {str(error)[:200]}"}, status_code=500)
            status = result.pop("_status", 200) if isinstance(result, dict) else 200
            return JSONResponse(result, status_code=status)

        endpoint.__name__ = "dreambooth_" + path.strip("/").replace("/", "_")
        app.add_api_route(PREFIX + path, endpoint, methods=[method], dependencies=[Depends(check_auth)],
                          tags=["dreambooth"])

    route("/status", "GET", _status)
    route("/models", "GET", _models)
    route("/sources", "GET", _sources)
    route("/params", "GET", _get_params)
    route("/params", "POST", _set_params, needs_body=True)
    route("/create", "POST", _create, needs_body=True)
    route("/cancel", "POST", _cancel, needs_body=True)
    route("/start_training", "POST", _start_training, needs_body=True)
    route("/checkpoint", "POST", _checkpoint, needs_body=True)


# handlers: plain functions over the request's arguments ------------------------------------------------
def _name(args: dict) -> str:
    name = args.get("model_name")
    if not isinstance(name, str) or not name.strip():
        raise DreamboothError("model_name is missing: give the model's name", field="model_name")
    return name.strip()


def _status(args: dict) -> dict:
    from .service.jobs import runner

    data = runner().status_dict()
    data["log"] = data["log"][-50:]
    return data


def _models(args: dict) -> dict:
    from .store import list_models

    return {"models": list_models()}


def _sources(args: dict) -> dict:
    from .service import operations

    return {"sources": [str(p) for p in operations.list_source_checkpoints()]}


def _get_params(args: dict) -> dict:
    from .service import operations

    cfg, warnings = operations.load_params(_name(args))
    return {"params": cfg.to_dict(), "warnings": warnings}


def _apply(cfg, params) -> None:
    if params is None:
        return
    if not isinstance(params, dict):
        raise DreamboothError("params must be a JSON object of parameter: value", field="params")
    for key, value in params.items():
        cfg.set(key, value)


def _set_params(args: dict) -> dict:
    from .platform import pathpolicy
    from .service import operations

    name = _name(args)
    cfg, _ = operations.load_params(name)
    _apply(cfg, args.get("params"))
    pathpolicy.check_config(cfg)
    path = operations.save_params(name, cfg)
    return {"message": f"params saved to {path}", "params": cfg.to_dict()}


def _create(args: dict) -> dict:
    from .service import operations
    from .service.jobs import runner

    from .platform.pathpolicy import check_source

    name = _name(args)
    source = check_source(args.get("source"))
    with runner().exclusive("create", name):
        model = operations.create_model(name, source, progress=runner().note)
    return {"message": f"model '{name}' created", "path": str(model.path), "_status": 201}


def _cancel(args: dict) -> dict:
    from .service.jobs import runner

    return {"message": runner().cancel()}


def _start_training(args: dict) -> dict:
    from .platform import modellock, pathpolicy
    from .service import operations
    from .service.jobs import runner
    from .store import model_dir

    name = _name(args)
    cfg, _ = operations.load_params(name)
    _apply(cfg, args.get("params"))
    pathpolicy.check_config(cfg)
    modellock.check_free(model_dir(name).path)  # another process trains it: 409 now, not a failed job later
    count = operations.preflight(cfg)  # concept folders, attention
    runner().start_training(name, cfg, resume=bool(args.get("resume", False)))
    return {"message": f"training '{name}' started ({count} images)", "_status": 202}


def _checkpoint(args: dict) -> dict:
    from .platform import host
    from .service import operations
    from .service.jobs import runner

    name = _name(args)
    params = args.get("params")
    cfg = operations.load_params(name)[0]
    _apply(cfg, params)  # bad values answer 400 before anything starts
    job = runner().current()
    if job is not None and job.kind == "train" and job.model_name == name:  # the trainer writes it (as the tab)
        return {"message": runner().request_save(cfg.half_model, cfg.use_subdir), "_status": 202}
    with runner().exclusive("checkpoint", name):
        path = operations.generate_ckpt(name, overrides=params)  # the export refreshes the WebUI's list
    return {"message": f"checkpoint written: {path}", "path": str(path)}

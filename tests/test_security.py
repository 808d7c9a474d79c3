"""Each attack from issue 9 against the standalone server (this interpreter's gradio), over HTTP.

One server with `--api-auth` and a data root: the page, Gradio's API and file routes and the REST routes
refuse a caller without the login; with it, paths outside the models folder and the data roots are
refused with one message that says nothing about whether they exist (symlinks resolved); a 50 MB body
answers 413 without being echoed. The figures (status code and message per attack) are printed (-s).
"""
import base64
import json
import os
import socket
import shutil

import httpx
import pytest

from dreambooth.api import PREFIX
from dreambooth.platform.pathpolicy import DATA_ROOTS_ENV

USER, PASSWORD = "alice", "s3cret-pw"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
REFUSED = "this path is not allowed here"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def report(attack: str, answer) -> None:
    body = answer.text if len(answer.text) < 300 else answer.text[:300] + "…"
    print(f"\nATTACK {attack}: {answer.status_code} {body}")


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_checkpoint, demo_images):
    from dreambooth.service.operations import create_model
    from dreambooth.ui import compat
    from dreambooth.ui.server import serve

    root = tmp_path_factory.mktemp("security")
    models, data, outside = root / "models", root / "data", root / "outside"
    shutil.copytree(demo_images, data / "images")
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret\n")
    shutil.copy(tiny_checkpoint, outside / "elsewhere.safetensors")
    (data / "escape").symlink_to(outside, target_is_directory=True)  # a link inside a data root, leading out
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DREAMBOOTH_MODELS_DIR", str(models))
        mp.setenv(DATA_ROOTS_ENV, "")
        mp.delenv("DREAMBOOTH_API_AUTH", raising=False)
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        create_model("m1", tiny_checkpoint, progress=lambda message: None)
        (models / "dreambooth" / "m1" / "samples").mkdir()
        (models / "dreambooth" / "m1" / "samples" / "sample_1-0.txt").write_text("a sample caption\n")
        port = free_port()
        blocks = serve(port=port, block=False, auth=f"{USER}:{PASSWORD}", data_roots=[data])
        site = {"url": f"http://127.0.0.1:{port}", "models": models, "data": data, "outside": outside,
                "blocks": blocks, "gradio_api": "/gradio_api" if compat.GRADIO_MAJOR >= 5 else ""}
        try:
            yield site
        finally:
            blocks.close()


def rest(site, method: str, path: str, auth: bool = True, headers=None, **kwargs):
    headers = {**(BASIC if auth else {}), **(headers or {})}
    return httpx.request(method, site["url"] + PREFIX + path, headers=headers, timeout=30, **kwargs)


def models_now(site) -> list:
    return sorted(p.name for p in (site["models"] / "dreambooth").iterdir() if not p.name.startswith("."))


# --- one login for everything ------------------------------------------------------------------------
def test_rest_routes_need_the_login(site):
    for path in ("/status", "/models", "/sources", "/params?model_name=m1"):
        answer = rest(site, "GET", path, auth=False)
        report(f"GET {path} without login", answer)
        assert answer.status_code == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(f"{USER}:nope".encode()).decode()}
    assert httpx.get(site["url"] + PREFIX + "/models", headers=wrong).status_code == 401
    assert rest(site, "GET", "/models").json() == {"models": ["m1"]}


def test_page_and_gradio_api_need_the_login(site):
    url, before = site["url"], models_now(site)
    page = httpx.get(url + "/", timeout=30)
    assert "dbt_train" not in page.text and "Performance Wizard" not in page.text  # the login form only
    config = httpx.get(url + site["gradio_api"].replace("/gradio_api", "") + "/config", timeout=30)
    report("GET /config without login", config)
    assert config.status_code in (401, 403)
    create = {"data": ["via_gradio", "tiny.safetensors", "detect"], "fn_index": 0, "session_hash": "x"}
    tried = 0
    for prefix in ("", "/gradio_api"):
        for path in ("/call/on_create", "/run/on_create", "/api/on_create", "/run/predict", "/api/predict",
                     "/queue/join", "/upload"):
            answer = httpx.post(url + prefix + path, json=create, timeout=30)
            if answer.status_code == 404:  # not a route of this gradio version
                continue
            tried += 1
            report(f"POST {prefix}{path} without login", answer)
            assert answer.status_code in (401, 403), (path, answer.status_code, answer.text[:200])
    assert tried >= 2
    assert models_now(site) == before  # nothing was created


def test_gradio3_queue_websocket_needs_the_login(site):
    """gradio 3.x runs events over a websocket (/queue/join): without the login it is closed unused."""
    from dreambooth.ui import compat

    if compat.GRADIO_MAJOR >= 4:
        pytest.skip("gradio 4+ joins the queue over HTTP (tested above)")
    import asyncio

    import websockets

    async def join():
        url = site["url"].replace("http://", "ws://") + "/queue/join"
        try:
            async with websockets.connect(url) as socket:
                await socket.recv()
        except websockets.exceptions.ConnectionClosed as closed:
            return getattr(closed, "code", None) or closed.rcvd.code
        except websockets.exceptions.InvalidStatusCode as refused:  # refused before the upgrade
            return refused.status_code
        return None

    code = asyncio.run(join())
    print(f"\nATTACK websocket /queue/join without login: closed with {code}")
    assert code in (1008, 401, 403)


def login(site) -> httpx.Client:
    client = httpx.Client(base_url=site["url"], timeout=30)
    answer = client.post("/login", data={"username": USER, "password": PASSWORD})
    assert answer.status_code in (200, 302, 303), answer.text
    return client


def test_file_routes_need_the_login(site):
    sample = site["models"] / "dreambooth" / "m1" / "samples" / "sample_1-0.txt"
    routes = [f"{site['gradio_api']}/file={sample}"]
    for route in routes:
        answer = httpx.get(site["url"] + route, timeout=30)
        report(f"GET {route} without login", answer)
        assert answer.status_code in (401, 403) and "a sample caption" not in answer.text
    client = login(site)
    try:
        for route in routes:  # the same request with the login is served: the refusal was the login's
            assert client.get(route).text == "a sample caption\n"
        outside = client.get(f"{site['gradio_api']}/file={site['outside'] / 'secret.txt'}")
        assert outside.status_code in (403, 404) and "top secret" not in outside.text
        passwd = client.get(f"{site['gradio_api']}/file=/etc/passwd")
        assert passwd.status_code in (403, 404) and "root:" not in passwd.text
    finally:
        client.close()


# --- paths from requests --------------------------------------------------------------------------
def concept(**values) -> dict:
    return {"instance_prompt": "sks toy", "n_save_sample": 0, **values}


def test_class_folder_outside_is_refused(site):
    target = site["outside"]
    before = sorted(os.listdir(target))
    params = {"concepts_list": [concept(instance_data_dir=str(site["data"] / "images"), class_data_dir=str(target),
                                        num_class_images_per=1, class_prompt="stolen")]}
    for path in ("/params", "/start_training"):
        answer = rest(site, "POST", path, json={"model_name": "m1", "params": params})
        report(f"POST {path} class_data_dir outside", answer)
        assert answer.status_code == 400 and REFUSED in answer.json()["error"]
        assert answer.json()["field"] == "concepts_list[0].class_data_dir"
    assert sorted(os.listdir(target)) == before


def test_sample_template_etc_passwd_is_refused(site):
    params = {"concepts_list": [concept(instance_data_dir=str(site["data"] / "images"),
                                        save_sample_template="/etc/passwd", n_save_sample=1)]}
    for path in ("/params", "/start_training"):
        answer = rest(site, "POST", path, json={"model_name": "m1", "params": params})
        report(f"POST {path} save_sample_template=/etc/passwd", answer)
        assert answer.status_code == 400 and REFUSED in answer.json()["error"]


def test_symlink_out_of_a_data_root_is_refused(site):
    params = {"concepts_list": [concept(instance_data_dir=str(site["data"] / "escape"))]}
    answer = rest(site, "POST", "/params", json={"model_name": "m1", "params": params})
    report("POST /params instance_data_dir = symlink out of the data root", answer)
    assert answer.status_code == 400 and REFUSED in answer.json()["error"]
    inside = {"concepts_list": [concept(instance_data_dir=str(site["data"] / "images"))]}
    assert rest(site, "POST", "/params", json={"model_name": "m1", "params": inside}).status_code == 200


def test_no_existence_oracle(site):
    answers = {}
    for name in ("secret.txt", "missing.txt", "elsewhere.safetensors", "missing.safetensors"):
        params = {"concepts_list": [concept(instance_data_dir=str(site["data"] / "images"),
                                            save_sample_template=str(site["outside"] / name))]}
        answers[("template", name)] = rest(site, "POST", "/params", json={"model_name": "m1", "params": params})
    for name in ("elsewhere.safetensors", "missing.safetensors", "../outside/elsewhere.safetensors"):
        answers[("source", name)] = rest(site, "POST", "/create", json={"model_name": "m2",
                                                                       "source": str(site["outside"] / name)})
    for key, answer in answers.items():
        report(f"{key[0]} outside: {key[1]}", answer)
    template = {(a.status_code, a.text) for k, a in answers.items() if k[0] == "template"}
    source = {(a.status_code, a.text) for k, a in answers.items() if k[0] == "source"}
    assert len(template) == 1 and len(source) == 1  # existing and missing files answer alike
    assert all(REFUSED in text and code == 400 for code, text in template | source)
    assert "m2" not in models_now(site)


def test_big_body_is_refused_unread(site):
    body = b'{"model_name": "' + b"x" * (50 * 1024 * 1024) + b'", "source": "tiny.safetensors"}'
    answer = rest(site, "POST", "/create", content=body, headers={"content-type": "application/json"})
    report("POST /create with a 50 MB body", answer)
    assert answer.status_code == 413 and len(answer.content) < 300
    # a body under the limit with a long value: the error names the field, not the value
    answer = rest(site, "POST", "/create", json={"model_name": "y" * 500_000, "source": "tiny.safetensors"})
    assert answer.status_code == 400 and len(answer.content) < 1000 and answer.json()["field"] == "model_name"
    answer = rest(site, "POST", "/params", json={"model_name": "m1", "params": {"learning_rate": "9" * 500_000}})
    assert answer.status_code == 400 and len(answer.content) < 1000


def test_model_name_tricks(site):
    for name in ("../m1", "/etc", "..", "m1/../../x"):
        answer = rest(site, "GET", f"/params?model_name={name}")
        assert answer.status_code == 400 and "not allowed" in answer.json()["error"], name


# --- the command line side ------------------------------------------------------------------------
def test_listen_without_auth_warns(capfd, monkeypatch, tmp_path):
    from dreambooth.ui import server

    monkeypatch.setenv("DREAMBOOTH_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.delenv("DREAMBOOTH_API_AUTH", raising=False)
    monkeypatch.setenv(DATA_ROOTS_ENV, "")
    monkeypatch.setattr(server, "prepare_sources", lambda: None)
    blocks = server.serve(port=free_port(), listen=True, block=False)
    blocks.close()
    err = capfd.readouterr().err
    assert "warning: --listen without --api-auth" in err and "without a login" in err


@pytest.mark.parametrize("value", ["alice", "alice:", ":pw", "alice:pw,bob"])
def test_malformed_auth_is_refused(value, capsys, monkeypatch):
    from dreambooth.cli import main

    monkeypatch.delenv("DREAMBOOTH_API_AUTH", raising=False)
    assert main(["serve", "--api-auth", value]) == 2
    assert "expected user:password" in capsys.readouterr().err


def test_help_documents_auth_and_data_roots(capsys):
    from dreambooth.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--api-auth" in out and "DREAMBOOTH_API_AUTH" in out and "--data-root" in out

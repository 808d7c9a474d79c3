"""REST routes on a bare FastAPI app: answers, 4xx JSON for bad input, host API auth honoured."""
import base64

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dreambooth.api import register_routes
from dreambooth.config import TrainConfig, save_config


@pytest.fixture
def models(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMBOOTH_MODELS_DIR", str(tmp_path / "models"))
    path = tmp_path / "models" / "dreambooth" / "m1"
    (path / "working").mkdir(parents=True)
    save_config(TrainConfig({"model_name": "m1"}), path / "db_config.json")
    return tmp_path / "models"


@pytest.fixture
def client(models):
    app = FastAPI()
    register_routes(app)
    return TestClient(app)


def test_status_and_models(client):
    status = client.get("/dreambooth-tab/v1/status")
    assert status.status_code == 200 and "state" in status.json() and "job" in status.json()
    assert client.get("/dreambooth-tab/v1/models").json() == {"models": ["m1"]}
    assert client.get("/dreambooth-tab/v1/sources").status_code == 200


def test_params_get_set(client):
    assert client.get("/dreambooth-tab/v1/params", params={"model_name": "m1"}).json()["params"]["num_train_epochs"] == 100
    answer = client.post("/dreambooth-tab/v1/params", json={"model_name": "m1", "params": {"num_train_epochs": 3}})
    assert answer.status_code == 200
    assert client.get("/dreambooth-tab/v1/params?model_name=m1").json()["params"]["num_train_epochs"] == 3


@pytest.mark.parametrize("method,path,body,code,text", [
    ("get", "/dreambooth-tab/v1/params", None, 400, "model_name is missing"),
    ("get", "/dreambooth-tab/v1/params?model_name=ghost", None, 404, "does not exist"),
    ("get", "/dreambooth-tab/v1/params?model_name=..%2Fx", None, 400, "not allowed"),
    ("post", "/dreambooth-tab/v1/params", {"model_name": "m1", "params": {"learning_rate": -1}}, 400, "learning_rate"),
    ("post", "/dreambooth-tab/v1/params", {"model_name": "m1", "params": {"nope": 1}}, 400, "unknown parameter"),
    ("post", "/dreambooth-tab/v1/start_training", {"model_name": "m1"}, 400, "no concepts"),
    ("post", "/dreambooth-tab/v1/start_training", {"model_name": "ghost"}, 404, "does not exist"),
    ("post", "/dreambooth-tab/v1/start_training",
     {"model_name": "m1", "params": {"concepts_list": [{"instance_data_dir": "/no/such"}]}}, 400, "not allowed"),
    ("post", "/dreambooth-tab/v1/create", {"model_name": "m1", "source": "x"}, 400, "already exists"),
    ("post", "/dreambooth-tab/v1/checkpoint", {}, 400, "model_name"),
])
def test_bad_input_is_4xx_json(client, method, path, body, code, text):
    answer = getattr(client, method)(path, json=body) if body is not None else getattr(client, method)(path)
    assert answer.status_code == code, answer.text
    assert text in answer.json()["error"]


def test_invalid_json_body(client):
    answer = client.post("/dreambooth-tab/v1/params", content=b"{not json", headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "JSON" in answer.json()["error"]


def test_cancel_without_job(client):
    assert "nothing to cancel" in client.post("/dreambooth-tab/v1/cancel").json()["message"]


def test_host_api_auth(models):
    app = FastAPI()
    register_routes(app, api_auth="alice:secret,bob:pw")
    client = TestClient(app)
    assert client.get("/dreambooth-tab/v1/status").status_code == 401
    bad = base64.b64encode(b"alice:wrong").decode()
    assert client.get("/dreambooth-tab/v1/status", headers={"Authorization": f"Basic {bad}"}).status_code == 401
    good = base64.b64encode(b"bob:pw").decode()
    assert client.get("/dreambooth-tab/v1/models", headers={"Authorization": f"Basic {good}"}).json() == {"models": ["m1"]}


def test_standalone_auth_from_env(models, monkeypatch):
    monkeypatch.setenv("DREAMBOOTH_API_AUTH", "carol:pw")
    app = FastAPI()
    register_routes(app)  # default: the host's auth (standalone: the env variable)
    client = TestClient(app)
    assert client.get("/dreambooth-tab/v1/status").status_code == 401
    good = base64.b64encode(b"carol:pw").decode()
    assert client.get("/dreambooth-tab/v1/status", headers={"Authorization": f"Basic {good}"}).status_code == 200


def test_missing_folder_under_the_models_root(client, models):
    from dreambooth.api import PREFIX

    concepts = [{"instance_data_dir": str(models / "no" / "such")}]
    answer = client.post(f"{PREFIX}/start_training", json={"model_name": "m1", "params": {"concepts_list": concepts}})
    assert answer.status_code == 400 and "does not exist" in answer.json()["error"]

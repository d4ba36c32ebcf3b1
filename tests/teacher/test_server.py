"""The local llama.cpp teacher: model lookup, errors, chat over the OpenAI API, clean shutdown."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from factory.core.errors import FactoryError
from factory.teacher.server import LocalTeacher, find_model


def test_find_model_in_package():
    p = find_model()
    assert p.suffix == ".gguf" and p.exists() and p.stat().st_size > 10_000_000


def test_missing_model_package_names_the_fix():
    with pytest.raises(FactoryError, match="pip install no-such-model-pkg"):
        find_model("no-such-model-pkg")


def test_missing_model_file():
    with pytest.raises(FactoryError, match="model file does not exist"):
        LocalTeacher(model_path="/nonexistent/model.gguf")


def test_chat_completion_uses_chat_template(teacher):
    assert len(teacher.endpoints) == 1 and teacher.endpoints[0].endswith("/v1")
    key = os.environ[teacher.api_key_env]
    assert httpx.get(teacher.endpoints[0] + "/models").status_code == 401  # the local teacher checks keys
    models = httpx.get(teacher.endpoints[0] + "/models", headers={"Authorization": f"Bearer {key}"}).json()
    assert teacher.model in [m["id"] for m in models["data"]]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=teacher.endpoints[0], api_key="wrong", max_retries=0).chat.completions.create(
            model=teacher.model, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    c = openai.OpenAI(base_url=teacher.endpoints[0], api_key=key, max_retries=0)
    r = c.chat.completions.create(model=teacher.model, messages=[{"role": "user", "content": "What is the capital of France?"}],
                                  max_tokens=24, temperature=0)
    text = r.choices[0].message.content
    assert text.strip() and "<|im_start|>" not in text and "<|im_end|>" not in text
    assert any(w in text.lower() for w in ("paris", "capital", "france"))  # an answer, not a continuation
    # the GGUF's ChatML template adds SmolLM2's default system prompt: far more than the ~8 bare tokens
    assert r.usage.prompt_tokens > 25 and 0 < r.usage.completion_tokens <= 24


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _gone(pid: int, timeout: float = 15.0) -> bool:
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_servers_die_with_a_killed_parent(tmp_path):
    """SIGKILL of the process that started the replicas leaves no orphan server behind."""
    code = ("from factory.teacher.server import LocalTeacher\nimport time,sys\n"
            "t=LocalTeacher(replicas=1).start()\nprint(t.pids[0], flush=True)\ntime.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pid = int(p.stdout.readline())
    assert _alive(pid)
    p.kill()
    p.wait()
    assert _gone(pid), "llama.cpp server outlived its parent"

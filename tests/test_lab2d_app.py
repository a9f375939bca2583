"""The 2-D lab tab (issue 29) through its API endpoint, on a page that holds only that tab."""

from __future__ import annotations

import os
import socket

import pytest

from conftest import quick_lab_models

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SAMPLING = {"concurrency_limit": 1, "concurrency_id": "sampling", "preprocess": False}  # as app.py passes it
# distribution, model, sampler, solver, steps, schedule, guidance, scale, rescale, apg_eta, seed, noise_level, arrows,
# points
REQUEST = ["blobs", "exact", "ode", "heun", 12, "flow", "cfg", 4.0, 0.0, 1.0, 0, 0.5, "x0", 200]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client():
    import gradio as gr
    from diffusion.serving.app_client import local_client

    from diffusion.app.lab2d import build_lab2d_tab

    with gr.Blocks() as demo:
        with gr.Tab("2-D lab", id="lab2d"):
            build_lab2d_tab(SAMPLING)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield local_client(url)
    finally:
        demo.close()


def call(client, **changes):
    names = ["distribution", "model", "sampler", "solver", "steps", "schedule", "guidance", "scale", "rescale",
             "apg_eta", "seed", "noise_level", "arrows", "points"]
    values = dict(zip(names, REQUEST)) | changes
    return client.predict(*values.values(), api_name="/lab2d")


def test_the_endpoint_draws_the_lab_with_exact_numbers(client):
    picture, compared, table, note = call(client)
    for path in (picture, compared):
        with open(path, "rb") as file:
            assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    readings = {row[0]: row[1:] for row in table["data"]}
    likelihood = readings["PF-ODE log-likelihood, mean of 8 exact points (nats)"]
    exact = float(likelihood[1].removeprefix("exact log-density "))
    assert float(likelihood[0]) == pytest.approx(exact, abs=0.02)  # the exact model's PF-ODE is exact
    cfg, auto = readings["CFG at w = 4: outside / distance"][0], readings["autoguidance at w = 4: outside / distance"][0]
    assert float(auto.split(" / ")[1]) < float(cfg.split(" / ")[1])  # autoguidance stays nearer the classes
    student, teacher = readings["straightness S of the reflow student's paths"]
    assert float(student) < 0.1 * float(teacher.removeprefix("its exact teacher: "))
    assert "outside its class's support" in note


def test_the_learned_mlp_and_a_stochastic_sampler(client):
    with quick_lab_models():  # what the run says, not how well the MLP learned (test_lab2d_samplers)
        _, _, table, note = call(client, model="mlp", sampler="ddpm", steps=30, schedule="vp-cosine",
                                 guidance="none", arrows="velocity")
    readings = {row[0]: row[1] for row in table["data"]}
    assert readings["network evaluations of the run"] == "30"
    assert "Trained just now for blobs" in note and "mlp, weak-mlp" in note  # at first use, then cached


@pytest.mark.parametrize("changes, message", [
    ({"steps": 500}, "steps must be a whole number in [1, 200], got 500"),
    ({"points": "many"}, "points must be a whole number in [50, 2000], got 'many'"),
    ({"noise_level": 0}, "noise level must be a number in [0.01, 1], got 0"),
    ({"scale": 2.5e30}, "scale must be a number in [0, 20]"),
    ({"distribution": "moons"}, "distribution must be one of blobs, rings, spirals, tree; got 'moons'"),
    ({"model": "reflow", "guidance": "autoguidance"}, "autoguidance needs a weaker model of the same family"),
    ({"arrows": "curl"}, "arrows must be one of x0, velocity; got 'curl'"),
    ({"guidance": "none", "rescale": 0.5}, "CFG rescale and APG eta modify guidance: choose CFG or autoguidance"),
])
def test_bad_values_get_a_sentence_naming_the_field_and_its_range(client, changes, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as error:
        call(client, **changes)
    assert message in str(error.value)

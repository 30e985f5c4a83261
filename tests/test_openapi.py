"""The OpenAPI document: valid OpenAPI 3.1, made from the validating classes, naming
every route of the app, and held to the running app by schemathesis."""

from __future__ import annotations

import sys
from pathlib import Path

import attrs
import trio
from openapi_spec_validator import validate

from actors.errors import ErrorCode
from actors.validation import MAX_OUTPUTS, SubmissionRequest
from daemon.api import create_app
from daemon.api.openapi import openapi_path
from tests.store_contract import full_job
from tests.test_api import FAST_SANDBOX

#: Examples schemathesis generates per operation: enough to cross every route with
#: valid and invalid bodies, few enough for the suite's time budget.
EXAMPLES = 10


async def _document(easel) -> dict:
    response = await easel.client.get("/api/openapi.json")
    assert response.status_code == 200
    return response.json()


async def test_the_document_is_valid_and_made_from_the_validating_classes(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    document = await _document(easel)
    validate(document)
    schemas = document["components"]["schemas"]
    submission = schemas["SubmissionRequest"]
    assert set(submission["properties"]) == {field.name for field in attrs.fields(SubmissionRequest)}
    assert submission["properties"]["number_of_outputs"]["maximum"] == MAX_OUTPUTS
    assert submission["properties"]["modelIdentifier"]["enum"] == ["sandbox-image", "sandbox-video"]
    by_model = submission["x-parameters-by-model"]
    assert set(by_model) == {"sandbox-image", "sandbox-video"}
    for ref in by_model.values():
        assert ref.rsplit("/", 1)[1] in schemas
    assert schemas["ErrorInfo"]["properties"]["code"]["enum"] == [code.value for code in ErrorCode]
    assert set(schemas["Job"]["properties"]) == set(full_job().to_api())


async def test_every_route_is_documented(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    document = await _document(easel)
    documented = {(path, method.upper()) for path, item in document["paths"].items()
                  for method in item}
    app = create_app(easel.runtime, media_dir=easel.state_dir / "media")
    routes = set()
    for rule in app.url_map.iter_rules():
        # The admin pages are HTML for people (a login form, tables), not the API.
        if rule.endpoint == "static" or rule.endpoint.startswith("admin."):
            continue
        path = openapi_path(rule.rule)
        routes |= {(path, method) for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert routes == documented


async def test_open_routes_say_so_and_the_rest_take_a_key(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    document = await _document(easel)
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    open_operations = {path for path, item in document["paths"].items()
                       for operation in item.values() if operation.get("security") == []}
    assert open_operations == {"/api/health", "/api/providers/{provider}/webhook",
                               "/api/openapi.json", "/api/docs", "/media/inputs/{name}"}


async def test_docs_page_lists_the_operations(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    page = await easel.client.get("/api/docs")
    assert page.headers["content-type"].startswith("text/html")
    assert "<code>/v1/videos/{id}/content</code>" in page.text
    assert "<script" not in page.text


async def test_schemathesis_finds_no_5xx_and_no_answer_against_the_document(
    easel_daemon, tmp_path: Path,
) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    schemathesis = Path(sys.executable).parent / "schemathesis"
    # The coverage phase is left out: its requests announce bodies they do not send,
    # which a server rightly waits for (the client's read timeout then "fails").
    result = await trio.run_process(
        [str(schemathesis), "run", f"{easel.base_url}/api/openapi.json", "--no-color",
         "--checks", "not_a_server_error,response_schema_conformance,"
                     "status_code_conformance,content_type_conformance",
         "--phases", "examples,fuzzing,stateful", "--max-examples", str(EXAMPLES),
         "--seed", "11", "--request-timeout", "30"],
        capture_stdout=True, capture_stderr=True, check=False,
        cwd=tmp_path,  # where schemathesis keeps its cache
    )
    output = result.stdout.decode()
    assert result.returncode == 0, output[-4000:]
    assert "passed" in output, output[-4000:]

"""GET /openapi.json types every answer: each 2xx response with a body names a model (or a
list of one), so clients generated from it are typed."""

from controller.app import create_app
from controller.config.settings import Settings


def test_every_2xx_response_has_a_schema(tmp_path):
    spec = create_app(Settings(database=tmp_path / "o.db"), run_loop=False).openapi()
    untyped, routes = [], 0
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            routes += 1
            for code, resp in op["responses"].items():
                if not code.startswith("2") or code == "204":
                    continue
                schema = resp.get("content", {}).get("application/json", {}).get("schema", {})
                ref = schema.get("$ref") or schema.get("items", {}).get("$ref")
                if not ref:
                    untyped.append(f"{method.upper()} {path} {code}: {schema}")
    assert routes >= 37
    assert untyped == []

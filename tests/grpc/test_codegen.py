"""The stubs are a build product of proto/: regenerated when a .proto changes, never from a stale folder."""

import shutil

from cluster.grpc import codegen


def test_stubs_follow_the_proto_files(tmp_path, monkeypatch):
    proto = tmp_path / "proto"
    shutil.copytree(codegen.PROTO_DIR, proto)
    monkeypatch.setattr(codegen, "PROTO_DIR", proto)
    monkeypatch.setattr(codegen, "HERE", tmp_path)
    monkeypatch.setattr(codegen, "OUT_DIR", tmp_path / "_gen")
    out = codegen.generate()
    assert codegen.is_current() and (out / "gptoss" / "v1" / "inference_pb2_grpc.py").exists()
    stamp = (out / codegen.STAMP).read_text()
    assert codegen.generate() == out and (out / codegen.STAMP).read_text() == stamp  # current: untouched
    source = proto / "gptoss" / "v1" / "inference.proto"
    source.write_text(source.read_text() + "\nmessage Added {\n  // A new message.\n  string field = 1;\n}\n")
    assert not codegen.is_current()
    codegen.generate()
    assert "Added" in (out / "gptoss" / "v1" / "inference_pb2.pyi").read_text() and codegen.is_current()


def test_every_field_is_documented():
    lines = (codegen.PROTO_DIR / "gptoss" / "v1" / "inference.proto").read_text().splitlines()
    fields = [i for i, line in enumerate(lines) if line.strip().endswith(";") and "=" in line
              and not line.strip().startswith(("//", "option", "syntax", "package"))]
    undocumented = [lines[i].strip() for i in fields if not lines[i - 1].strip().startswith("//")
                    and "//" not in lines[i]]
    assert fields and not undocumented, undocumented

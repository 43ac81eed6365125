"""Messages against the stand-in Hub (#33): a local mistake is not blamed on the network."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_a_missing_token_file_is_named_not_blamed_on_the_network(hf_env, tmp_path):
    missing = tmp_path / "no-such-token"
    hf_env.write(f'[models.tiny]\nsource.huggingface = {{ repo = "acme/tiny" }}\n'
                 f'auth.tokenFile = "{missing}"\n')
    r = hf_env.run("lock")
    assert r.code == 1
    assert f"auth.tokenFile {missing}: cannot read it" in r.err, r.err
    assert "HF_ENDPOINT" not in r.err and "network" not in r.err, r.err
    assert "models.tiny" in r.err and "create it" in r.err, r.err

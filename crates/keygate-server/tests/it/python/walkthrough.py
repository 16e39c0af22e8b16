"""The README's walk-through, driven by a client that openapi-python-client
generated from the server's own /openapi.json (issue 21): a workspace, a key,
the verify API, rotation, revocation. Every answer is parsed into the
generated models; an answer the document does not describe fails the run.

Usage: python walkthrough.py ADMIN_URL ADMIN_KEY (the generated package on PYTHONPATH)
"""

import sys

from keygate_admin_api_client import AuthenticatedClient
from keygate_admin_api_client.api.keys import create_key, get_key, revoke_key, rotate_key, verify_key
from keygate_admin_api_client.api.workspaces import create_workspace
from keygate_admin_api_client.models import (
    CreatedKey,
    CreateKey,
    CreateWorkspace,
    ErrorEnvelope,
    KeyView,
    PropagatedCreatedKey,
    PropagatedKeyView,
    RevokeKey,
    RotateKey,
    VerifyKey,
    VerifyResult,
    WorkspaceView,
)


def expect(value, kind):
    if not isinstance(value, kind):
        raise SystemExit(f"expected {kind.__name__}, got {value!r}")
    return value


def verified(client, key):
    return verify_key.sync(client=client, body=VerifyKey(key=key, scopes=["invoices:read"]))


def main(admin_url, admin_key):
    # Bearer, as the document's second scheme says; X-API-Key works too.
    client = AuthenticatedClient(base_url=admin_url, token=admin_key, raise_on_unexpected_status=True)

    workspace = expect(create_workspace.sync(client=client, body=CreateWorkspace(name="Acme")), WorkspaceView)
    created = expect(
        create_key.sync(
            client=client,
            id=workspace.id,
            body=CreateKey(name="Production Server", scopes=["invoices:read"], expires_in="90d"),
        ),
        CreatedKey,
    )
    assert created.key.startswith("kg_live_"), created.masked
    assert created.status == "active" and created.workspace_id == workspace.id

    answer = expect(verified(client, created.key), VerifyResult)
    assert answer.valid and answer.key.id == created.id and answer.workspace.id == workspace.id

    wrong = expect(verified(client, "kg_live_typo"), ErrorEnvelope)
    assert (wrong.status, wrong.code) == (401, "INVALID_API_KEY"), wrong

    rotated = expect(rotate_key.sync(client=client, id=created.id, body=RotateKey(grace="1h")), PropagatedCreatedKey)
    assert rotated.rotated_from == created.id and rotated.key != created.key
    assert expect(verified(client, created.key), VerifyResult).valid, "the old key works for the grace period"
    assert expect(verified(client, rotated.key), VerifyResult).valid

    revoked = expect(
        revoke_key.sync(client=client, id=rotated.id, body=RevokeKey(reason="leaked in a log")),
        PropagatedKeyView,
    )
    assert revoked.status == "revoked" and revoked.revoked_reason == "leaked in a log"
    refused = expect(verified(client, rotated.key), ErrorEnvelope)
    assert (refused.status, refused.code) == (401, "API_KEY_REVOKED"), refused

    shown = expect(get_key.sync(client=client, id=rotated.id), KeyView)
    assert shown.status == "revoked" and shown.masked == rotated.masked
    print(f"walk-through done: {workspace.id} {created.id} -> {rotated.id}")


if __name__ == "__main__":
    main(*sys.argv[1:3])

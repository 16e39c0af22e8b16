-- What a leak report of one of the workspace's live keys does (issue 20):
-- `revoke`, `expire` or `notify`; NULL follows the config's `leaks.on_report`.
ALTER TABLE workspaces ADD COLUMN leak_policy TEXT;

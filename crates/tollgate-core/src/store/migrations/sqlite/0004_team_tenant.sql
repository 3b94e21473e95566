-- A team belongs to at most one tenant; key principals take their tenant from their team.
ALTER TABLE teams ADD COLUMN tenant TEXT;

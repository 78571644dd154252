-- Sleep cycles say truthfully why they ran: manual (`npllm sleep --now`), scheduled (the
-- sleep window opened on an idle machine) or idle (the window is "any": an idle machine).
ALTER TABLE npllm.sleep_cycles DROP CONSTRAINT sleep_cycles_trigger_check;
UPDATE npllm.sleep_cycles SET trigger = 'manual' WHERE trigger = 'forced';
ALTER TABLE npllm.sleep_cycles ALTER COLUMN trigger SET DEFAULT 'manual';
ALTER TABLE npllm.sleep_cycles ADD CONSTRAINT sleep_cycles_trigger_check
    CHECK (trigger IN ('manual', 'scheduled', 'idle'));
COMMENT ON COLUMN npllm.sleep_cycles.trigger IS
    'manual: npllm sleep --now; scheduled: the sleep window on an idle machine; idle: window "any".';

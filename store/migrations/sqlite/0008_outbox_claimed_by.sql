-- The relay that last claimed an outbox item. A relay takes back what it still holds when
-- it claims again: a claim whose commit succeeded but whose answer was lost (the database
-- went down at that moment) otherwise held the user's thread for the whole lease.
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;

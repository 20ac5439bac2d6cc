CREATE TABLE IF NOT EXISTS bench_limit (id bigserial PRIMARY KEY, doc text NOT NULL)

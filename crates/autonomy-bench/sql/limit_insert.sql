INSERT INTO bench_limit (doc) VALUES ($1)

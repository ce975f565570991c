-- urlfleet schema v1 (PostgreSQL). Timestamps are milliseconds since the Unix epoch (BIGINT).

CREATE TABLE jobs (
    id              BIGSERIAL PRIMARY KEY,
    name            TEXT NOT NULL,
    state           TEXT NOT NULL,
    priority        SMALLINT NOT NULL,
    options         BYTEA NOT NULL,
    unique_key      TEXT NOT NULL,
    unique_active   BOOLEAN NOT NULL,
    idempotency_key TEXT,
    not_before      BIGINT NOT NULL,
    trace_parent    TEXT,
    received        BIGINT NOT NULL DEFAULT 0,
    total           BIGINT NOT NULL DEFAULT 0,
    duplicates      BIGINT NOT NULL DEFAULT 0,
    leased          BIGINT NOT NULL DEFAULT 0,
    checked         BIGINT NOT NULL DEFAULT 0,
    fresh           BIGINT NOT NULL DEFAULT 0,
    invalid         BIGINT NOT NULL DEFAULT 0,
    failed          BIGINT NOT NULL DEFAULT 0,
    cancelled       BIGINT NOT NULL DEFAULT 0,
    n_ok            BIGINT NOT NULL DEFAULT 0,
    n_redirected    BIGINT NOT NULL DEFAULT 0,
    n_broken        BIGINT NOT NULL DEFAULT 0,
    n_error         BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    sealed_at       BIGINT,
    finished_at     BIGINT
);
-- Duplicate submissions: at most one active job per unique key, enforced by the database.
CREATE UNIQUE INDEX jobs_unique_active ON jobs (unique_key) WHERE unique_active;
CREATE UNIQUE INDEX jobs_idempotency ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_state ON jobs (state, id);

CREATE TABLE urls (
    id             BIGSERIAL PRIMARY KEY,
    url            TEXT NOT NULL UNIQUE,
    host           TEXT NOT NULL,
    kind           TEXT,
    status         INTEGER,
    final_url      TEXT,
    redirects      TEXT,
    attempts       INTEGER,
    response_ms    BIGINT,
    content_type   TEXT,
    content_length BIGINT,
    error          TEXT,
    checked_at     BIGINT
);

CREATE TABLE checks (
    url_id         BIGINT NOT NULL REFERENCES urls (id),
    checked_at     BIGINT NOT NULL,
    lease_id       BIGINT NOT NULL,
    kind           TEXT NOT NULL,
    status         INTEGER,
    final_url      TEXT,
    redirects      TEXT,
    attempts       INTEGER NOT NULL,
    response_ms    BIGINT NOT NULL,
    content_type   TEXT,
    content_length BIGINT,
    error          TEXT,
    PRIMARY KEY (url_id, checked_at)
);

CREATE TABLE job_urls (
    job_id    BIGINT NOT NULL REFERENCES jobs (id),
    url_id    BIGINT NOT NULL REFERENCES urls (id),
    host      TEXT NOT NULL,
    state     TEXT NOT NULL,
    url_order SMALLINT NOT NULL,
    attempts  INTEGER NOT NULL DEFAULT 0,
    lease_id  BIGINT,
    kind      TEXT,
    PRIMARY KEY (job_id, url_id)
);
CREATE INDEX job_urls_frontier ON job_urls (host, url_order, url_id) WHERE state = 'pending';
CREATE INDEX job_urls_lease ON job_urls (lease_id) WHERE state = 'leased';
-- Plain, not partial: SQLite cannot prove `state = 'pending'` implies an IN-list predicate.
CREATE INDEX job_urls_url ON job_urls (url_id);

CREATE TABLE job_invalid (
    job_id BIGINT NOT NULL REFERENCES jobs (id),
    seq    BIGINT NOT NULL,
    input  TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- The frontier: one row per host. `pending` counts its pending job_urls rows; a polite host allows one
-- lease at a time (`max_leases` 1), a host whose limits were lifted may be leased several times at once.
CREATE TABLE hosts (
    host            TEXT PRIMARY KEY,
    pending         BIGINT NOT NULL DEFAULT 0,
    active_leases   INTEGER NOT NULL DEFAULT 0,
    max_leases      INTEGER NOT NULL DEFAULT 1,
    priority        SMALLINT NOT NULL DEFAULT 9,
    epoch           BIGINT NOT NULL DEFAULT 0,
    next_allowed_at BIGINT NOT NULL DEFAULT 0
);
-- `priority`: the best job priority among the host's pending work, so urgent jobs are leased first.
CREATE INDEX hosts_ready ON hosts (priority, next_allowed_at) WHERE pending > 0;

CREATE TABLE leases (
    id          BIGSERIAL PRIMARY KEY,
    host        TEXT NOT NULL,
    epoch       BIGINT NOT NULL,
    holder      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    active      BOOLEAN NOT NULL
);
CREATE INDEX leases_expiry ON leases (expires_at) WHERE active;
CREATE INDEX leases_holder ON leases (holder) WHERE active;

-- The head schema of a new SQLite database: written by
-- `uv run python -m danube_migrator.render_head_schema`; do not edit by hand.

CREATE TABLE teams (
	id VARCHAR(36) NOT NULL, 
	name VARCHAR(100) NOT NULL, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_teams PRIMARY KEY (id), 
	CONSTRAINT uq_teams_name UNIQUE (name)
);

CREATE TABLE users (
	id VARCHAR(36) NOT NULL, 
	username VARCHAR(64) NOT NULL, 
	display_name VARCHAR(200) NOT NULL, 
	created_at DATETIME NOT NULL, 
	is_admin BOOLEAN DEFAULT 0 NOT NULL, 
	CONSTRAINT pk_users PRIMARY KEY (id), 
	CONSTRAINT uq_users_username UNIQUE (username)
);

CREATE TABLE workers (
	id VARCHAR(36) NOT NULL, 
	name VARCHAR(100) NOT NULL, 
	created_at DATETIME NOT NULL, 
	revoked_at DATETIME, 
	CONSTRAINT pk_workers PRIMARY KEY (id), 
	CONSTRAINT uq_workers_name UNIQUE (name)
);

CREATE TABLE api_tokens (
	id VARCHAR(36) NOT NULL, 
	name VARCHAR(100) NOT NULL, 
	token_sha256 BLOB NOT NULL, 
	user_id VARCHAR(36), 
	worker_id VARCHAR(36), 
	created_at DATETIME NOT NULL, 
	expires_at DATETIME, 
	last_used_at DATETIME, 
	revoked_at DATETIME, 
	CONSTRAINT pk_api_tokens PRIMARY KEY (id), 
	CONSTRAINT ck_api_tokens_one_owner CHECK ((user_id IS NULL) <> (worker_id IS NULL)), 
	CONSTRAINT uq_api_tokens_token_sha256 UNIQUE (token_sha256), 
	CONSTRAINT fk_api_tokens_user_id_users FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE, 
	CONSTRAINT fk_api_tokens_worker_id_workers FOREIGN KEY(worker_id) REFERENCES workers (id) ON DELETE CASCADE
);

CREATE INDEX ix_api_tokens_user_id_created_at ON api_tokens (user_id, created_at);

CREATE INDEX ix_api_tokens_worker_id ON api_tokens (worker_id);

CREATE TABLE pipelines (
	id VARCHAR(36) NOT NULL, 
	team_id VARCHAR(36) NOT NULL, 
	name VARCHAR(100) NOT NULL, 
	steps JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	next_job_number INTEGER DEFAULT '1' NOT NULL, 
	CONSTRAINT pk_pipelines PRIMARY KEY (id), 
	CONSTRAINT uq_pipelines_team_id_name UNIQUE (team_id, name), 
	CONSTRAINT ck_pipelines_next_job_number_positive CHECK (next_job_number >= 1), 
	CONSTRAINT fk_pipelines_team_id_teams FOREIGN KEY(team_id) REFERENCES teams (id) ON DELETE CASCADE
);

CREATE TABLE team_members (
	team_id VARCHAR(36) NOT NULL, 
	user_id VARCHAR(36) NOT NULL, 
	role VARCHAR(16) NOT NULL, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_team_members PRIMARY KEY (team_id, user_id), 
	CONSTRAINT fk_team_members_team_id_teams FOREIGN KEY(team_id) REFERENCES teams (id) ON DELETE CASCADE, 
	CONSTRAINT fk_team_members_user_id_users FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE, 
	CONSTRAINT ck_team_members_role CHECK (role IN ('owner', 'maintainer', 'member'))
);

CREATE INDEX ix_team_members_user_id ON team_members (user_id);

CREATE TABLE jobs (
	id VARCHAR(36) NOT NULL, 
	pipeline_id VARCHAR(36) NOT NULL, 
	number INTEGER NOT NULL, 
	status VARCHAR(16) DEFAULT 'pending' NOT NULL, 
	created_at DATETIME NOT NULL, 
	started_at DATETIME, 
	finished_at DATETIME, 
	token_sha256 BLOB, 
	secrets_expire_at DATETIME, 
	worker_id VARCHAR(36), 
	node VARCHAR(100), 
	claimed_at DATETIME, 
	last_seen_at DATETIME, 
	cancel_requested BOOLEAN DEFAULT 0 NOT NULL, 
	reason VARCHAR(500), 
	CONSTRAINT pk_jobs PRIMARY KEY (id), 
	CONSTRAINT uq_jobs_pipeline_id_number UNIQUE (pipeline_id, number), 
	CONSTRAINT ck_jobs_number_positive CHECK (number >= 1), 
	CONSTRAINT ck_jobs_status_not_skipped CHECK (status <> 'skipped'), 
	CONSTRAINT fk_jobs_pipeline_id_pipelines FOREIGN KEY(pipeline_id) REFERENCES pipelines (id) ON DELETE CASCADE, 
	CONSTRAINT ck_jobs_job_status CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled', 'skipped')), 
	CONSTRAINT fk_jobs_worker_id_workers FOREIGN KEY(worker_id) REFERENCES workers (id) ON DELETE SET NULL
);

CREATE INDEX ix_jobs_status_created_at_id ON jobs (status, created_at, id);

CREATE INDEX ix_jobs_status_last_seen_at ON jobs (status, last_seen_at);

CREATE TABLE secrets (
	id VARCHAR(36) NOT NULL, 
	team_id VARCHAR(36), 
	pipeline_id VARCHAR(36), 
	name VARCHAR(100) NOT NULL, 
	ciphertext BLOB NOT NULL, 
	key_id BLOB NOT NULL, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	CONSTRAINT pk_secrets PRIMARY KEY (id), 
	CONSTRAINT uq_secrets_team_id_name UNIQUE (team_id, name), 
	CONSTRAINT uq_secrets_pipeline_id_name UNIQUE (pipeline_id, name), 
	CONSTRAINT ck_secrets_one_scope CHECK ((team_id IS NULL) <> (pipeline_id IS NULL)), 
	CONSTRAINT fk_secrets_team_id_teams FOREIGN KEY(team_id) REFERENCES teams (id) ON DELETE CASCADE, 
	CONSTRAINT fk_secrets_pipeline_id_pipelines FOREIGN KEY(pipeline_id) REFERENCES pipelines (id) ON DELETE CASCADE
);

CREATE TABLE artifacts (
	id VARCHAR(36) NOT NULL, 
	job_id VARCHAR(36) NOT NULL, 
	name VARCHAR(255) NOT NULL, 
	size_bytes BIGINT NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	uri VARCHAR(2048) NOT NULL, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_artifacts PRIMARY KEY (id), 
	CONSTRAINT uq_artifacts_job_id_name UNIQUE (job_id, name), 
	CONSTRAINT ck_artifacts_size_not_negative CHECK (size_bytes >= 0), 
	CONSTRAINT fk_artifacts_job_id_jobs FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE
);

CREATE TABLE steps (
	id VARCHAR(36) NOT NULL, 
	job_id VARCHAR(36) NOT NULL, 
	position INTEGER NOT NULL, 
	name VARCHAR(100) NOT NULL, 
	command TEXT NOT NULL, 
	status VARCHAR(16) DEFAULT 'pending' NOT NULL, 
	exit_code INTEGER, 
	started_at DATETIME, 
	finished_at DATETIME, 
	timeout_s INTEGER DEFAULT '3600' NOT NULL, 
	log_length BIGINT DEFAULT '0' NOT NULL, 
	CONSTRAINT pk_steps PRIMARY KEY (id), 
	CONSTRAINT uq_steps_job_id_position UNIQUE (job_id, position), 
	CONSTRAINT ck_steps_position_not_negative CHECK (position >= 0), 
	CONSTRAINT ck_steps_timeout_s_in_range CHECK (timeout_s BETWEEN 1 AND 86400), 
	CONSTRAINT ck_steps_log_length_not_negative CHECK (log_length >= 0), 
	CONSTRAINT fk_steps_job_id_jobs FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE, 
	CONSTRAINT ck_steps_step_status CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled', 'skipped'))
);

CREATE TABLE log_chunks (
	id VARCHAR(36) NOT NULL, 
	step_id VARCHAR(36) NOT NULL, 
	"offset" BIGINT NOT NULL, 
	data BLOB NOT NULL, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_log_chunks PRIMARY KEY (id), 
	CONSTRAINT uq_log_chunks_step_id_offset UNIQUE (step_id, "offset"), 
	CONSTRAINT ck_log_chunks_offset_not_negative CHECK ("offset" >= 0), 
	CONSTRAINT fk_log_chunks_step_id_steps FOREIGN KEY(step_id) REFERENCES steps (id) ON DELETE CASCADE
);

CREATE TABLE alembic_version (
	version_num VARCHAR(32) NOT NULL, 
	CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

INSERT INTO alembic_version (version_num) VALUES ('0002');

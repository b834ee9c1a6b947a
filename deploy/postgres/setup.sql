-- PostgreSQL role and database for fluid-controller (SQLite needs none of this).
-- Run once, as the PostgreSQL superuser, after replacing the password:
--   sudo -u postgres psql -v ON_ERROR_STOP=1 -f /usr/share/doc/fluid-controller/examples/postgres-setup.sql
-- Then in /etc/fluid/controller.toml (or FLUID_DATABASE_URL in /etc/default/fluid-controller):
--   database_url = "postgres://fluid:CHANGE-ME@db.example:5432/fluid"
-- The controller creates and migrates its tables itself at every start (sqlx migrations,
-- controller/migrations/postgres); it needs to own the database, nothing more.

CREATE ROLE fluid LOGIN PASSWORD 'CHANGE-ME';
CREATE DATABASE fluid OWNER fluid ENCODING 'UTF8' TEMPLATE template0;
-- PostgreSQL 15+ no longer lets every role create objects in the public schema;
-- the owner of the database gets it explicitly.
\connect fluid
ALTER SCHEMA public OWNER TO fluid;

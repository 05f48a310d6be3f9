"""Once Campfire's schema as Rails writes it, for building storages in tests: facts
written out from basecamp/once-campfire's db/migrate/*.rb and db/schema.rb, in the
DDL Active Record's SQLite adapter emits for them (create_table, add_column, and the
table rebuild of change_column_null / remove_column / add_foreign_key). These are
kept apart from campfire.py's own copy on purpose: a test that compares a storage
campfire.py migrated with this one compares two independent writings.

Also: the rows a running Rails app writes (bcrypt digests, Action Text bodies with
mention attachments, sessions with plain tokens), and a schema comparison by
PRAGMA table_info / index_list / foreign_key_list (column order and DDL spacing
differ between a migrated storage and one loaded from db/schema.rb)."""

import sqlite3
import zlib

# Rails' own tables (activerecord schema_migration.rb, internal_metadata.rb).
RAILS_INTERNAL = """
CREATE TABLE "schema_migrations" ("version" varchar NOT NULL PRIMARY KEY);
CREATE TABLE "ar_internal_metadata" ("key" varchar NOT NULL PRIMARY KEY, "value" varchar, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL);
"""

# db/migrate, in order: (version, file name, statements as Rails ran them on SQLite).
MIGRATIONS = (
    ("20231215043540", "create_initial_schema", """
CREATE TABLE "accounts" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "join_code" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL);
CREATE TABLE "action_text_rich_texts" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "body" text, "record_type" varchar NOT NULL, "record_id" bigint NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL);
CREATE UNIQUE INDEX "index_action_text_rich_texts_uniqueness" ON "action_text_rich_texts" ("record_type", "record_id", "name");
CREATE TABLE "active_storage_blobs" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "key" varchar NOT NULL, "filename" varchar NOT NULL, "content_type" varchar, "metadata" text, "service_name" varchar NOT NULL, "byte_size" bigint NOT NULL, "checksum" varchar, "created_at" datetime(6) NOT NULL);
CREATE UNIQUE INDEX "index_active_storage_blobs_on_key" ON "active_storage_blobs" ("key");
CREATE TABLE "active_storage_attachments" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "record_type" varchar NOT NULL, "record_id" bigint NOT NULL, "blob_id" bigint NOT NULL, "created_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_c3b3935057"
FOREIGN KEY ("blob_id")
  REFERENCES "active_storage_blobs" ("id")
);
CREATE INDEX "index_active_storage_attachments_on_blob_id" ON "active_storage_attachments" ("blob_id");
CREATE UNIQUE INDEX "index_active_storage_attachments_uniqueness" ON "active_storage_attachments" ("record_type", "record_id", "name", "blob_id");
CREATE TABLE "active_storage_variant_records" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "blob_id" bigint NOT NULL, "variation_digest" varchar NOT NULL, CONSTRAINT "fk_rails_993965df05"
FOREIGN KEY ("blob_id")
  REFERENCES "active_storage_blobs" ("id")
);
CREATE UNIQUE INDEX "index_active_storage_variant_records_uniqueness" ON "active_storage_variant_records" ("blob_id", "variation_digest");
CREATE TABLE "rooms" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "type" varchar NOT NULL, "creator_id" bigint NOT NULL);
CREATE TABLE "users" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "role" integer DEFAULT 0 NOT NULL, "email_address" varchar, "password_digest" varchar, "active" boolean DEFAULT 1);
CREATE UNIQUE INDEX "index_users_on_email_address" ON "users" ("email_address");
CREATE TABLE "messages" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "room_id" integer NOT NULL, "creator_id" integer NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "client_message_id" varchar NOT NULL, CONSTRAINT "fk_rails_a8db0fb63a"
FOREIGN KEY ("room_id")
  REFERENCES "rooms" ("id")
, CONSTRAINT "fk_rails_761a2f12b3"
FOREIGN KEY ("creator_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "index_messages_on_creator_id" ON "messages" ("creator_id");
CREATE INDEX "index_messages_on_room_id" ON "messages" ("room_id");
CREATE TABLE "boosts" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "message_id" integer NOT NULL, "booster_id" integer NOT NULL, "content" varchar(16) NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_3539c52d73"
FOREIGN KEY ("message_id")
  REFERENCES "messages" ("id")
);
CREATE INDEX "index_boosts_on_booster_id" ON "boosts" ("booster_id");
CREATE INDEX "index_boosts_on_message_id" ON "boosts" ("message_id");
CREATE TABLE "memberships" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "room_id" integer NOT NULL, "user_id" integer NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "unread_at" datetime(6), "involvement" varchar DEFAULT 'mentions', "connections" integer DEFAULT 0 NOT NULL, "connected_at" datetime(6));
CREATE INDEX "index_memberships_on_room_id_and_created_at" ON "memberships" ("room_id", "created_at");
CREATE UNIQUE INDEX "index_memberships_on_room_id_and_user_id" ON "memberships" ("room_id", "user_id");
CREATE INDEX "index_memberships_on_room_id" ON "memberships" ("room_id");
CREATE INDEX "index_memberships_on_user_id" ON "memberships" ("user_id");
CREATE TABLE "push_subscriptions" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "user_id" integer NOT NULL, "endpoint" varchar DEFAULT NULL, "p256dh_key" varchar DEFAULT NULL, "auth_key" varchar DEFAULT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "user_agent" varchar DEFAULT NULL, CONSTRAINT "fk_rails_43d43720fc"
FOREIGN KEY ("user_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "idx_on_endpoint_p256dh_key_auth_key_7553014576" ON "push_subscriptions" ("endpoint", "p256dh_key", "auth_key");
CREATE INDEX "index_push_subscriptions_on_user_id" ON "push_subscriptions" ("user_id");
CREATE TABLE "searches" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "user_id" integer NOT NULL, "query" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_e192b86393"
FOREIGN KEY ("user_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "index_searches_on_user_id" ON "searches" ("user_id");
create virtual table message_search_index using fts5(body, tokenize=porter);"""),
    ("20231220143106", "add_bio_to_users", """
ALTER TABLE "users" ADD "bio" text;"""),
    ("20240110071740", "create_sessions", """
CREATE TABLE "sessions" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "user_id" integer NOT NULL, "token" varchar NOT NULL, "ip_address" varchar, "user_agent" varchar, "last_active_at" datetime(6) NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_758836b4f0"
FOREIGN KEY ("user_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "index_sessions_on_user_id" ON "sessions" ("user_id");
CREATE UNIQUE INDEX "index_sessions_on_token" ON "sessions" ("token");"""),
    ("20240115124901", "remove_owner_role", """
update users set role = 1 where role = 2;"""),
    ("20240130003150", "create_webhooks", """
CREATE TABLE "webhooks" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "user_id" integer NOT NULL, "url" varchar, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_51bf96d3bc"
FOREIGN KEY ("user_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "index_webhooks_on_user_id" ON "webhooks" ("user_id");"""),
    ("20240130213001", "add_custom_styles_to_accounts", """
ALTER TABLE "accounts" ADD "custom_styles" text;"""),
    ("20240131105830", "alter_users_set_password_digest_not_null", """
update users set password_digest = '' where password_digest is null;
CREATE TEMPORARY TABLE "ausers" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "role" integer DEFAULT 0 NOT NULL, "email_address" varchar DEFAULT NULL, "password_digest" varchar DEFAULT NULL, "active" boolean DEFAULT 1, "bio" text DEFAULT NULL);
CREATE UNIQUE INDEX "tindex_ausers_on_email_address" ON "ausers" ("email_address");
INSERT INTO "ausers" ("id","name","created_at","updated_at","role","email_address","password_digest","active","bio") SELECT "id","name","created_at","updated_at","role","email_address","password_digest","active","bio" FROM "users";
DROP TABLE "users";
CREATE TABLE "users" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "role" integer DEFAULT 0 NOT NULL, "email_address" varchar DEFAULT NULL, "password_digest" varchar NOT NULL, "active" boolean DEFAULT 1, "bio" text DEFAULT NULL);
CREATE UNIQUE INDEX "index_users_on_email_address" ON "users" ("email_address");
INSERT INTO "users" ("id","name","created_at","updated_at","role","email_address","password_digest","active","bio") SELECT "id","name","created_at","updated_at","role","email_address","password_digest","active","bio" FROM "ausers";
DROP TABLE "ausers";"""),
    ("20240209110503", "alter_users_add_bot_token", """
ALTER TABLE "users" ADD "bot_token" varchar;
CREATE UNIQUE INDEX "index_users_on_bot_token" ON "users" ("bot_token");
CREATE TEMPORARY TABLE "ausers" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "role" integer DEFAULT 0 NOT NULL, "email_address" varchar DEFAULT NULL, "password_digest" varchar NOT NULL, "active" boolean DEFAULT 1, "bio" text DEFAULT NULL, "bot_token" varchar DEFAULT NULL);
CREATE UNIQUE INDEX "tindex_ausers_on_email_address" ON "ausers" ("email_address");
CREATE UNIQUE INDEX "tindex_ausers_on_bot_token" ON "ausers" ("bot_token");
INSERT INTO "ausers" ("id","name","created_at","updated_at","role","email_address","password_digest","active","bio","bot_token") SELECT "id","name","created_at","updated_at","role","email_address","password_digest","active","bio","bot_token" FROM "users";
DROP TABLE "users";
CREATE TABLE "users" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "role" integer DEFAULT 0 NOT NULL, "email_address" varchar DEFAULT NULL, "password_digest" varchar DEFAULT NULL, "active" boolean DEFAULT 1, "bio" text DEFAULT NULL, "bot_token" varchar DEFAULT NULL);
CREATE UNIQUE INDEX "index_users_on_email_address" ON "users" ("email_address");
CREATE UNIQUE INDEX "index_users_on_bot_token" ON "users" ("bot_token");
INSERT INTO "users" ("id","name","created_at","updated_at","role","email_address","password_digest","active","bio","bot_token") SELECT "id","name","created_at","updated_at","role","email_address","password_digest","active","bio","bot_token" FROM "ausers";
DROP TABLE "ausers";"""),
    ("20250825100957", "add_service_name_to_active_storage_blobs", """
-- nothing: active_storage_blobs.service_name is already there"""),
    ("20250825100958", "create_active_storage_variant_records", """
CREATE TABLE IF NOT EXISTS "active_storage_variant_records" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "blob_id" bigint NOT NULL, "variation_digest" varchar NOT NULL, CONSTRAINT "fk_rails_993965df05"
FOREIGN KEY ("blob_id")
  REFERENCES "active_storage_blobs" ("id")
);
CREATE UNIQUE INDEX IF NOT EXISTS "index_active_storage_variant_records_uniqueness" ON "active_storage_variant_records" ("blob_id", "variation_digest");"""),
    ("20250825100959", "remove_not_null_on_active_storage_blobs_checksum", """
CREATE TEMPORARY TABLE "aactive_storage_blobs" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "key" varchar NOT NULL, "filename" varchar NOT NULL, "content_type" varchar, "metadata" text, "service_name" varchar NOT NULL, "byte_size" bigint NOT NULL, "checksum" varchar, "created_at" datetime(6) NOT NULL);
CREATE UNIQUE INDEX "tindex_aactive_storage_blobs_on_key" ON "aactive_storage_blobs" ("key");
INSERT INTO "aactive_storage_blobs" ("id","key","filename","content_type","metadata","service_name","byte_size","checksum","created_at") SELECT "id","key","filename","content_type","metadata","service_name","byte_size","checksum","created_at" FROM "active_storage_blobs";
DROP TABLE "active_storage_blobs";
CREATE TABLE "active_storage_blobs" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "key" varchar NOT NULL, "filename" varchar NOT NULL, "content_type" varchar, "metadata" text, "service_name" varchar NOT NULL, "byte_size" bigint NOT NULL, "checksum" varchar, "created_at" datetime(6) NOT NULL);
CREATE UNIQUE INDEX "index_active_storage_blobs_on_key" ON "active_storage_blobs" ("key");
INSERT INTO "active_storage_blobs" ("id","key","filename","content_type","metadata","service_name","byte_size","checksum","created_at") SELECT "id","key","filename","content_type","metadata","service_name","byte_size","checksum","created_at" FROM "aactive_storage_blobs";
DROP TABLE "aactive_storage_blobs";"""),
    ("20251126092013", "create_bans", """
CREATE TABLE "bans" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "user_id" integer NOT NULL, "ip_address" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_070022cd76"
FOREIGN KEY ("user_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "index_bans_on_user_id" ON "bans" ("user_id");
CREATE INDEX "index_bans_on_ip_address" ON "bans" ("ip_address");"""),
    ("20251126115722", "change_active_to_status_on_users", """
ALTER TABLE "users" ADD "status" integer DEFAULT 0 NOT NULL;
UPDATE users SET status = 1 WHERE active = 0;
CREATE TEMPORARY TABLE "ausers" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "role" integer DEFAULT 0 NOT NULL, "email_address" varchar, "password_digest" varchar, "active" boolean DEFAULT 1, "bio" text, "bot_token" varchar, "status" integer DEFAULT 0 NOT NULL);
CREATE UNIQUE INDEX "tindex_ausers_on_email_address" ON "ausers" ("email_address");
CREATE UNIQUE INDEX "tindex_ausers_on_bot_token" ON "ausers" ("bot_token");
INSERT INTO "ausers" ("id","name","created_at","updated_at","role","email_address","password_digest","active","bio","bot_token","status") SELECT "id","name","created_at","updated_at","role","email_address","password_digest","active","bio","bot_token","status" FROM "users";
DROP TABLE "users";
CREATE TABLE "users" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "role" integer DEFAULT 0 NOT NULL, "email_address" varchar, "password_digest" varchar, "bio" text, "bot_token" varchar, "status" integer DEFAULT 0 NOT NULL);
CREATE UNIQUE INDEX "index_users_on_email_address" ON "users" ("email_address");
CREATE UNIQUE INDEX "index_users_on_bot_token" ON "users" ("bot_token");
INSERT INTO "users" ("id","name","created_at","updated_at","role","email_address","password_digest","bio","bot_token","status") SELECT "id","name","created_at","updated_at","role","email_address","password_digest","bio","bot_token","status" FROM "ausers";
DROP TABLE "ausers";"""),
    ("20251126130131", "add_account_settings", """
ALTER TABLE "accounts" ADD "settings" json;"""),
    ("20251212154340", "add_singleton_constraint_to_accounts", """
ALTER TABLE "accounts" ADD "singleton_guard" integer DEFAULT 0 NOT NULL;
CREATE UNIQUE INDEX "index_accounts_on_singleton_guard" ON "accounts" ("singleton_guard");"""),
)

ONCE_ERA_LAST = "20240209110503"  # alter_users_add_bot_token: the first ONCE releases end here

# db/schema.rb (version 2025_12_12_154340) as Rails 8.2 loads it into a new storage.
SCHEMA_RB = """
CREATE TABLE "accounts" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "created_at" datetime(6) NOT NULL, "custom_styles" text, "join_code" varchar NOT NULL, "name" varchar NOT NULL, "settings" json, "singleton_guard" integer DEFAULT 0 NOT NULL, "updated_at" datetime(6) NOT NULL);
CREATE UNIQUE INDEX "index_accounts_on_singleton_guard" ON "accounts" ("singleton_guard");
CREATE TABLE "action_text_rich_texts" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "body" text, "created_at" datetime(6) NOT NULL, "name" varchar NOT NULL, "record_id" bigint NOT NULL, "record_type" varchar NOT NULL, "updated_at" datetime(6) NOT NULL);
CREATE UNIQUE INDEX "index_action_text_rich_texts_uniqueness" ON "action_text_rich_texts" ("record_type", "record_id", "name");
CREATE TABLE "active_storage_attachments" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "blob_id" bigint NOT NULL, "created_at" datetime(6) NOT NULL, "name" varchar NOT NULL, "record_id" bigint NOT NULL, "record_type" varchar NOT NULL, CONSTRAINT "fk_rails_c3b3935057"
FOREIGN KEY ("blob_id")
  REFERENCES "active_storage_blobs" ("id")
);
CREATE INDEX "index_active_storage_attachments_on_blob_id" ON "active_storage_attachments" ("blob_id");
CREATE UNIQUE INDEX "index_active_storage_attachments_uniqueness" ON "active_storage_attachments" ("record_type", "record_id", "name", "blob_id");
CREATE TABLE "active_storage_blobs" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "byte_size" bigint NOT NULL, "checksum" varchar, "content_type" varchar, "created_at" datetime(6) NOT NULL, "filename" varchar NOT NULL, "key" varchar NOT NULL, "metadata" text, "service_name" varchar NOT NULL);
CREATE UNIQUE INDEX "index_active_storage_blobs_on_key" ON "active_storage_blobs" ("key");
CREATE TABLE "active_storage_variant_records" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "blob_id" bigint NOT NULL, "variation_digest" varchar NOT NULL, CONSTRAINT "fk_rails_993965df05"
FOREIGN KEY ("blob_id")
  REFERENCES "active_storage_blobs" ("id")
);
CREATE UNIQUE INDEX "index_active_storage_variant_records_uniqueness" ON "active_storage_variant_records" ("blob_id", "variation_digest");
CREATE TABLE "bans" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "created_at" datetime(6) NOT NULL, "ip_address" varchar NOT NULL, "updated_at" datetime(6) NOT NULL, "user_id" integer NOT NULL, CONSTRAINT "fk_rails_070022cd76"
FOREIGN KEY ("user_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "index_bans_on_ip_address" ON "bans" ("ip_address");
CREATE INDEX "index_bans_on_user_id" ON "bans" ("user_id");
CREATE TABLE "boosts" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "booster_id" integer NOT NULL, "content" varchar(16) NOT NULL, "created_at" datetime(6) NOT NULL, "message_id" integer NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_3539c52d73"
FOREIGN KEY ("message_id")
  REFERENCES "messages" ("id")
);
CREATE INDEX "index_boosts_on_booster_id" ON "boosts" ("booster_id");
CREATE INDEX "index_boosts_on_message_id" ON "boosts" ("message_id");
CREATE TABLE "memberships" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "connected_at" datetime(6), "connections" integer DEFAULT 0 NOT NULL, "created_at" datetime(6) NOT NULL, "involvement" varchar DEFAULT 'mentions', "room_id" integer NOT NULL, "unread_at" datetime(6), "updated_at" datetime(6) NOT NULL, "user_id" integer NOT NULL);
CREATE INDEX "index_memberships_on_room_id_and_created_at" ON "memberships" ("room_id", "created_at");
CREATE UNIQUE INDEX "index_memberships_on_room_id_and_user_id" ON "memberships" ("room_id", "user_id");
CREATE INDEX "index_memberships_on_room_id" ON "memberships" ("room_id");
CREATE INDEX "index_memberships_on_user_id" ON "memberships" ("user_id");
CREATE TABLE "messages" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "client_message_id" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "creator_id" integer NOT NULL, "room_id" integer NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_a8db0fb63a"
FOREIGN KEY ("room_id")
  REFERENCES "rooms" ("id")
, CONSTRAINT "fk_rails_761a2f12b3"
FOREIGN KEY ("creator_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "index_messages_on_creator_id" ON "messages" ("creator_id");
CREATE INDEX "index_messages_on_room_id" ON "messages" ("room_id");
CREATE TABLE "push_subscriptions" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "auth_key" varchar, "created_at" datetime(6) NOT NULL, "endpoint" varchar, "p256dh_key" varchar, "updated_at" datetime(6) NOT NULL, "user_agent" varchar, "user_id" integer NOT NULL, CONSTRAINT "fk_rails_43d43720fc"
FOREIGN KEY ("user_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "idx_on_endpoint_p256dh_key_auth_key_7553014576" ON "push_subscriptions" ("endpoint", "p256dh_key", "auth_key");
CREATE INDEX "index_push_subscriptions_on_user_id" ON "push_subscriptions" ("user_id");
CREATE TABLE "rooms" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "created_at" datetime(6) NOT NULL, "creator_id" bigint NOT NULL, "name" varchar, "type" varchar NOT NULL, "updated_at" datetime(6) NOT NULL);
CREATE TABLE "searches" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "created_at" datetime(6) NOT NULL, "query" varchar NOT NULL, "updated_at" datetime(6) NOT NULL, "user_id" integer NOT NULL, CONSTRAINT "fk_rails_e192b86393"
FOREIGN KEY ("user_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "index_searches_on_user_id" ON "searches" ("user_id");
CREATE TABLE "sessions" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "created_at" datetime(6) NOT NULL, "ip_address" varchar, "last_active_at" datetime(6) NOT NULL, "token" varchar NOT NULL, "updated_at" datetime(6) NOT NULL, "user_agent" varchar, "user_id" integer NOT NULL, CONSTRAINT "fk_rails_758836b4f0"
FOREIGN KEY ("user_id")
  REFERENCES "users" ("id")
);
CREATE UNIQUE INDEX "index_sessions_on_token" ON "sessions" ("token");
CREATE INDEX "index_sessions_on_user_id" ON "sessions" ("user_id");
CREATE TABLE "users" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "bio" text, "bot_token" varchar, "created_at" datetime(6) NOT NULL, "email_address" varchar, "name" varchar NOT NULL, "password_digest" varchar, "role" integer DEFAULT 0 NOT NULL, "status" integer DEFAULT 0 NOT NULL, "updated_at" datetime(6) NOT NULL);
CREATE UNIQUE INDEX "index_users_on_bot_token" ON "users" ("bot_token");
CREATE UNIQUE INDEX "index_users_on_email_address" ON "users" ("email_address");
CREATE TABLE "webhooks" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "url" varchar, "user_id" integer NOT NULL, CONSTRAINT "fk_rails_51bf96d3bc"
FOREIGN KEY ("user_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "index_webhooks_on_user_id" ON "webhooks" ("user_id");
CREATE VIRTUAL TABLE IF NOT EXISTS message_search_index USING fts5 (body, tokenize=porter);
"""

# BCrypt::Password.create("secret123456", cost: 4) by bcrypt-ruby 3.1.18: the password of
# Campfire's test/fixtures/users.yml, in the digest has_secure_password writes.
FIXTURE_PASSWORD = "secret123456"
FIXTURE_DIGEST = "$2a$04$nmNb2Xuf4KXNUlGK2Ureru0BlBHzF3yfx5nRVy8BpK.dSAZdbZ4aq"
MENTION = "application/vnd.campfire.mention"  # app/models/user/mentionable.rb (attachable content type)


def identify(label):
    """ActiveRecord::FixtureSet.identify: the id a fixture label gets (CRC32 mod 2**30 - 1)."""
    return zlib.crc32(label.encode()) % (2 ** 30 - 1)


def statements(script):
    """A block's statements (sqlite3.complete_statement decides where one ends)."""
    found, current = [], ""
    for line in script.splitlines(keepends=True):
        if not current and line.lstrip().startswith("--"):
            continue
        current += line
        if sqlite3.complete_statement(current):
            found.append(current.strip())
            current = ""
    return found


def migrate(db, upto=None, before=None):
    """Run Rails' migrations up to and including `upto` (all when None) on an open
    connection, each in its own transaction with its schema_migrations row."""
    db.isolation_level = None
    db.executescript(RAILS_INTERNAL)
    for version, _name, script in MIGRATIONS:
        if before:
            before(db, version)
        db.execute("BEGIN")
        db.execute("PRAGMA defer_foreign_keys = ON")
        for statement in statements(script):
            db.execute(statement)
        db.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))
        db.execute("COMMIT")
        if version == upto:
            break
    db.execute("INSERT OR REPLACE INTO ar_internal_metadata VALUES ('environment', 'production', "
               "'2024-02-10 09:00:00.000000', '2024-02-10 09:00:00.000000')")


def load_schema_rb(db):
    """A new storage as `bin/rails db:prepare` makes it from db/schema.rb: the schema,
    then every migration version up to the schema's (assume_migrated_upto_version)."""
    db.isolation_level = None
    db.executescript(RAILS_INTERNAL + SCHEMA_RB)
    db.executemany("INSERT INTO schema_migrations (version) VALUES (?)", [(m[0],) for m in MIGRATIONS])
    db.execute("INSERT INTO ar_internal_metadata VALUES ('environment', 'production', "
               "'2026-01-01 09:00:00.000000', '2026-01-01 09:00:00.000000')")


def schema_of(db, *, ours=False):
    """Tables, columns, indexes and foreign keys as PRAGMAs report them (order-free).
    Tables and indexes named campfire_py_* are left out unless `ours`."""
    schema = {}
    tables = [row[0] for row in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "AND name NOT LIKE 'message_search_index_%' ORDER BY name")]
    for table in tables:
        if table.startswith("campfire_py_") and not ours:
            continue
        columns = {row[1]: (row[2], row[3], None if row[4] in (None, "NULL") else row[4], row[5])
                   for row in db.execute('PRAGMA table_info("%s")' % table)}
        indexes = {row[1]: (row[2], tuple(info[2] for info in db.execute('PRAGMA index_info("%s")' % row[1])))
                   for row in db.execute('PRAGMA index_list("%s")' % table)
                   if row[3] == "c" and (ours or not row[1].startswith("campfire_py_"))}
        keys = sorted((row[3], row[2], row[4]) for row in db.execute('PRAGMA foreign_key_list("%s")' % table))
        schema[table] = (columns, indexes, keys)
    return schema


def schema_differences(db, expected):
    """What `db` has beyond or short of `expected` (schema_of of a Rails storage), as lines;
    our own campfire_py_* tables and indexes are listed separately as additions."""
    actual, full = schema_of(db), schema_of(db, ours=True)
    lines = []
    for table in sorted(set(actual) | set(expected)):
        if table not in actual or table not in expected:
            lines.append("table %s: %s" % (table, "missing" if table not in actual else "extra"))
            continue
        for part, label in ((0, "columns"), (1, "indexes"), (2, "foreign keys")):
            if actual[table][part] != expected[table][part]:
                lines.append("%s of %s: %r != %r" % (label, table, actual[table][part], expected[table][part]))
    additions = sorted(table for table in full if table not in actual)
    for table in sorted(full):
        additions += sorted(name for name in full[table][1] if name.startswith("campfire_py_"))
    return lines, sorted(additions)


T0 = "2024-02-12 09:00:00.000000"


def stamp(minutes, seconds=0):
    """A datetime(6) text `minutes` after T0."""
    return "2024-02-12 %02d:%02d:%02d.%06d" % (9 + minutes // 60, minutes % 60, seconds, 123456)


# Campfire's test/fixtures (users.yml, rooms.yml), with the rows a running app adds:
# memberships, messages with their Action Text bodies, boosts, a session.
USERS = (  # label, name, email, role (0 member, 1 administrator, 2 bot), bio, active
    ("david", "David", "david@37signals.com", 1, None, 1),
    ("jason", "Jason", "jason@37signals.com", 1, None, 1),
    ("jz", "JZ", "jz@37signals.com", 0, "Designer", 1),
    ("kevin", "Kevin", "kevin@37signals.com", 0, "Programmer", 1),
    ("bender", "Bender Bot", None, 2, None, 1),
    ("gone", "Gone Person", "gone@37signals.com", 0, None, 0),
)
# label, name, type, created minutes after T0 ("All Talk" is the account's first room
# although its id sorts elsewhere; the direct rooms have no name).
ROOMS = (
    ("pets", "All Pets", "Rooms::Open", 5),
    ("hq", "HQ", "Rooms::Open", 6),
    ("watercooler", "All Talk", "Rooms::Closed", 0),
    ("designers", "Designers", "Rooms::Closed", 7),
    ("david_and_jason", None, "Rooms::Direct", 8),
    ("david_and_kevin", None, "Rooms::Direct", 9),
)
MEMBERS = {
    "pets": ("david", "jason", "jz", "kevin"),
    "hq": ("david", "jason", "jz", "kevin"),
    "watercooler": ("david", "jason", "jz", "kevin", "bender"),
    "designers": ("david", "jz"),
    "david_and_jason": ("david", "jason"),
    "david_and_kevin": ("david", "kevin"),
}
# label, room, author, minutes after T0, body (HTML as Action Text stores it), touched
# (minutes of a later boost or attachment: messages.updated_at moves, the body doesn't),
# edited (minutes of a later edit of the body: the rich text's updated_at moves).
MESSAGES = (
    ("first", "watercooler", "david", 10, "<div>Welcome to the walnut grove</div>", None, None),
    ("boosted", "watercooler", "jason", 11, "<div>The walnut harvest is in</div>", 30, None),
    ("edited", "watercooler", "jz", 12, "<div>Fixed the walnut typo</div>", None, 40),
    ("later", "watercooler", "kevin", 13, "<div>Another walnut story</div>", None, None),
    ("pets", "pets", "david", 14, "<div>Dogs and cats</div>", None, None),
    ("secret", "designers", "jz", 15, "<div>walnut palette for designers only</div>", None, None),
    ("direct", "david_and_jason", "david", 16, "<div>Private hello</div>", None, None),
)
SESSION_TOKEN = "Kq3vN8xWb2ZtRm5YpLc7HdJf"  # has_secure_token: 24 base58 characters, stored as is


def add_team(db, *, era, mention_sgid=None, index=("first", "boosted")):
    """The fixture rows, written as Rails writes them, into a storage of `era`
    ("once": users.active; "current": users.status). `mention_sgid` (Kevin's,
    signed by the caller's Rails peer) adds a message mentioning him. `index`: the
    messages whose search rows exist (Rails writes one per message, but a restored
    storage may have lost some)."""
    uid = {label: identify(label) for label, *_ in USERS}
    db.execute("INSERT INTO accounts (id, name, join_code, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
               (identify("signal"), "37signals", "Xk3P-9wQz-Lm2R", T0, T0))
    for label, name, email, role, bio, active in USERS:
        digest = FIXTURE_DIGEST if email else None
        token = "BenderToken123" if role == 2 else None
        if era == "once":
            db.execute("INSERT INTO users (id, name, email_address, password_digest, role, bio, bot_token, active, "
                       "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (uid[label], name, email, digest, role, bio, token, active, T0, T0))
        else:
            db.execute("INSERT INTO users (id, name, email_address, password_digest, role, bio, bot_token, status, "
                       "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (uid[label], name, email, digest, role, bio, token, 0 if active else 1, T0, T0))
    rid = {}
    for label, name, kind, minutes in ROOMS:
        rid[label] = identify(label)
        db.execute("INSERT INTO rooms (id, name, type, creator_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                   (rid[label], name, kind, uid["david"], stamp(minutes), stamp(minutes)))
        for member in MEMBERS[label]:
            db.execute("INSERT INTO memberships (room_id, user_id, involvement, connections, created_at, updated_at) "
                       "VALUES (?, ?, ?, 0, ?, ?)", (rid[label], uid[member],
                                                    "everything" if kind == "Rooms::Direct" else "mentions",
                                                    stamp(minutes), stamp(minutes)))
    messages = list(MESSAGES)
    if mention_sgid:
        messages.append(("mention", "watercooler", "david", 17,
                         '<div>Thanks <action-text-attachment sgid="%s" content-type="%s">'
                         '</action-text-attachment> for the walnut</div>' % (mention_sgid, MENTION), None, None))
    mid = {}
    for label, room, author, minutes, body, touched, edited in messages:
        mid[label] = identify("message_" + label)
        updated = stamp(max(minutes, touched or 0, edited or 0))
        db.execute("INSERT INTO messages (id, room_id, creator_id, client_message_id, created_at, updated_at) "
                   "VALUES (?, ?, ?, ?, ?, ?)", (mid[label], rid[room], uid[author], "client-" + label,
                                                 stamp(minutes), updated))
        # Action Text saves the body just after the message (a few microseconds later).
        db.execute("INSERT INTO action_text_rich_texts (name, body, record_type, record_id, created_at, updated_at) "
                   "VALUES ('body', ?, 'Message', ?, ?, ?)",
                   (body, mid[label], stamp(minutes, 1), stamp(edited, 1) if edited else stamp(minutes, 1)))
        if touched:
            db.execute("INSERT INTO boosts (message_id, booster_id, content, created_at, updated_at) "
                       "VALUES (?, ?, ?, ?, ?)", (mid[label], uid["kevin"], "🌰", stamp(touched), stamp(touched)))
        if label in index:
            plain = body.replace("<div>", "").replace("</div>", "")
            db.execute("INSERT INTO message_search_index (rowid, body) VALUES (?, ?)", (mid[label], plain))
    db.execute("INSERT INTO sessions (user_id, token, ip_address, user_agent, last_active_at, created_at, updated_at) "
               "VALUES (?, ?, '127.0.0.1', 'Rails browser', ?, ?, ?)", (uid["kevin"], SESSION_TOKEN, T0, T0, T0))
    return uid, rid, mid


def build(path, *, era, mention_sgid=None, index=("first", "boosted")):
    """A storage file: the ONCE era's (the first eight migrations) or today's (db/schema.rb),
    with the fixture team in it. Returns (user ids, room ids, message ids) by label."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")  # Rails 7.1+ opens SQLite in WAL mode
    if era == "once":
        migrate(db, upto=ONCE_ERA_LAST)
    else:
        load_schema_rb(db)
    db.execute("BEGIN")
    ids = add_team(db, era=era, mention_sgid=mention_sgid, index=index)
    db.execute("COMMIT")
    db.close()
    return ids

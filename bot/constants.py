"""Limits, throttles and timeouts, each with where its number comes from.

Platform limits live here rather than in adapters so the renderer can keep every text within
them before an adapter ever sees it.
"""

#: Slack truncates message text past 40,000 characters (chat.postMessage docs).
SLACK_TEXT_LIMIT = 40_000
#: A Slack section block holds at most 3,000 characters (Block Kit reference).
SLACK_SECTION_LIMIT = 3_000
#: Slack allows at most 50 blocks per message (Block Kit reference).
SLACK_MAX_BLOCKS = 50
#: Discord message content is capped at 2,000 characters (Discord API docs).
DISCORD_CONTENT_LIMIT = 2_000
#: Slack recommends keeping `text` under 4,000 characters (chat.postMessage docs, "Truncating
#: content"); edits above it are refused well before the 40,000 cap.
SLACK_EDIT_SAFE_LIMIT = 4_000
#: A field of a Slack section block holds at most 2,000 characters (Block Kit reference).
SLACK_FIELD_LIMIT = 2_000
#: Discord embed limits (Discord API docs, Embed Limits): title 256, field value 1,024, and
#: 6,000 characters for all of a message's embeds together.
DISCORD_EMBED_TITLE_LIMIT = 256
DISCORD_EMBED_FIELD_VALUE_LIMIT = 1_024
DISCORD_EMBED_TOTAL_LIMIT = 6_000
#: Discord thread names are 1-100 characters (Discord API docs, Start Thread from Message).
DISCORD_THREAD_NAME_LIMIT = 100
#: Discord's default per-file upload limit, 10 MiB, on unboosted guilds (Discord API docs).
DISCORD_DEFAULT_FILE_LIMIT = 10 * 1024 * 1024

#: The largest file of a run that is read, stored and uploaded, in MiB (`resources.max_file_mb`):
#: Slack takes files up to 1 GB (files.getUploadURLExternal docs), but a worker reads a file
#: whole into memory to hash, redact and store it.
RUN_MAX_FILE_MB = 100

#: Seconds between a running RQ job's heartbeats (RQ's `job_monitoring_interval`; its default, 30 s,
#: would leave a job lost with its worker unnoticed for minutes).
JOB_HEARTBEAT_S = 5
#: A started job whose last heartbeat is older than this was lost with its worker.
JOB_LOST_AFTER_S = 4 * JOB_HEARTBEAT_S
#: A reply stored by a bot process on another host and not posted after this long is posted by
#: a reaper (on the same host a reaper sees at once whether that process is gone).
UNPOSTED_FOREIGN_WAIT_S = 300
#: Unanswered messages older than this are not answered any more when their job was lost (the
#: thread has moved on); younger ones are handled again (`workers.reaper`).
LOST_MESSAGE_HORIZON_S = 3600

#: A post or upload the platform answered 429 is tried again after its Retry-After, at most
#: this many times (Slack's 429s carry Retry-After of a few seconds: chat.postMessage docs).
RATE_LIMIT_RETRIES = 5
#: A Retry-After longer than this is not waited out in a job: the post fails and says so.
RATE_LIMIT_MAX_WAIT_S = 30.0

#: Per-channel rate budgets (bot.rate_budget), shared by every process through Redis.
#: Slack: "about 1 message per second per channel with short bursts" (chat.postMessage docs,
#: PLATFORM_FACTS); posts and uploads of one channel share this refill rate...
SLACK_CHANNEL_POSTS_PER_S = 1.0
#: ...and a burst of 2, under any short burst Slack allows, so the network's jitter between two
#: posts granted 1 s apart never turns into a 429.
SLACK_CHANNEL_POST_BURST = 2
#: Slack chat.update is Tier 3, "50+ per minute" per method per workspace (PLATFORM_FACTS,
#: Slack's rate-limit tiers): one workspace-wide bucket for every edit the app makes.
SLACK_UPDATES_PER_S = 50 / 60
#: Tier 3 "tolerates occasional bursts" (Slack's rate-limit docs); 5 is a modest one.
SLACK_UPDATE_BURST = 5
#: Discord: 5 messages per 5 s per channel, posts and edits alike (Discord's per-route buckets,
#: PLATFORM_FACTS); a Discord thread is a channel of its own.
DISCORD_CHANNEL_MESSAGES_PER_S = 1.0
#: One less than Discord's 5, as headroom for network jitter between processes.
DISCORD_CHANNEL_BURST = 4
#: An intermediate edit leaves this many tokens in its bucket, so new posts and final states go first.
RATE_BUDGET_RESERVE = 1
#: A post or final edit waits at most this long for a token, then goes anyway (a 429 then
#: still waits out its Retry-After): the final state of a message must land.
RATE_BUDGET_MAX_WAIT_S = 60.0

#: Edits of one status message are coalesced to at most one per second (Slack chat.update is
#: Tier 3, ~50/min; Discord's per-route buckets allow about 5 per 5 s).
STATUS_EDIT_INTERVAL_S = 1.0
#: A status message stays short: long edits fail well before Slack's 40k (PLATFORM_FACTS).
STATUS_TEXT_LIMIT = 1_500
#: How many tool calls the status checklist shows before it folds the rest into a count.
STATUS_CHECKLIST_ITEMS = 12
#: Replies longer than this are attached as a file rather than split into many messages.
REPLY_ATTACH_THRESHOLD = 12_000

#: RQ's default job timeout is 180 s (rq/defaults.py); chat jobs that only answer need less.
CHAT_JOB_TIMEOUT_S = 180
#: Agent runs may legitimately take long; the manifest's agent.timeout_seconds overrides this.
AGENT_RUN_TIMEOUT_S = 900
#: The RQ job gets this much on top of the run's own timeout, so the run can clean up and
#: report before RQ kills the work-horse.
AGENT_JOB_GRACE_S = 60
#: A running agent run refreshes its heartbeat this often.
RUN_HEARTBEAT_S = 5
#: ...and is marked failed when its heartbeat is older than this (its worker died): well
#: inside the minute after which a "running" status would look hung.
RUN_STALE_AFTER_S = 30
#: How often each worker process looks for runs of dead workers.
REAPER_INTERVAL_S = 10
#: Files a run uploads one by one by default (`resources.max_uploads`); the rest go as one zip,
#: so a run that touches hundreds of files does not flood the thread.
RUN_MAX_UPLOADS = 20
#: The upload limit of a port that names none: Discord's unboosted 10 MiB is the lowest of
#: the platforms', less headroom for the request around the file.
DEFAULT_UPLOAD_LIMIT_BYTES = 8 * 1024 * 1024
#: Slack accepts files up to 1 GB (files.getUploadURLExternal docs).
SLACK_FILE_LIMIT = 1024 * 1024 * 1024
#: Name of the RQ queue every Threadwork job goes to.
QUEUE_NAME = "threadwork"
#: Each worker also takes jobs from a queue of its own (this prefix, then its name), first: a
#: conversation's follow-up goes there when that worker holds the conversation's warm session.
WORKER_QUEUE_PREFIX = f"{QUEUE_NAME}:worker:"
#: Seconds a connection to Redis may take to open, in every process and client of the bot.
REDIS_CONNECT_TIMEOUT_S = 3
#: A worker whose Redis connection failed (RQ stops listening) listens again after this.
WORKER_RELISTEN_S = 1.0
#: How long a worker is remembered as the holder of a conversation's session after its last run.
SESSION_AFFINITY_TTL_S = 24 * 3600
#: A job given to one worker's own queue and not taken within this (the worker died, or took
#: other work meanwhile) is moved to the shared queue by the next reaper pass.
ROUTED_JOB_WAIT_S = 10
#: How long the answer to "is any worker listening?" is trusted before Redis is asked again:
#: a person starting a worker sees the notice stop within this, and a busy bot asks rarely.
WORKERS_RECHECK_S = 5.0

#: SQLite waits this long for a lock before failing (WAL allows one writer at a time).
SQLITE_BUSY_TIMEOUT_MS = 5_000
#: Rows `/history` shows by default.
HISTORY_DEFAULT_ROWS = 20

#: Console: the thread a `bot chat` session continues when none is named.
CONSOLE_DEFAULT_THREAD = "main"
#: Console: how long `bot chat` waits at end of input for replies and runs still in progress.
CONSOLE_DRAIN_TIMEOUT_S = 1_800

#: The newest message seen per channel is written to the database at most this often (not per
#: event, so dispatch gains no write); a crash loses at most this much, which catch-up re-reads.
CURSOR_FLUSH_INTERVAL_S = 1.0
#: After downtime, messages older than this are not answered (our choice: a day-old request
#: answered out of the blue helps less than it confuses; the log still counts what was skipped).
CATCH_UP_MAX_AGE_S = 24 * 3600
#: ...and at most this many messages are read per channel and per thread, the newest kept: one
#: conversations.history page (Slack recommends no more than 200) or two Discord pages of 100.
CATCH_UP_MAX_MESSAGES = 200
#: Threads per channel whose replies catch-up reads: the ones with the latest activity.
CATCH_UP_MAX_THREADS = 50
#: Catch-up reads from this long before a channel's cursor: events around a disconnect may
#: arrive out of order, and a message read again is refused by the durable dedupe.
CATCH_UP_OVERLAP_S = 10

"""Routing stage 3: heuristics on a message's wording and, for short replies, its thread's state.

Runs after explicit commands and chat-line patterns, before the tentative fallback. Every rule
is a precompiled regular expression over the message's prose (code blocks set aside); the
thread is read (one small query) only for short replies such as "ok go ahead" or "no, not
now", whose meaning depends on what the bot said last.

It decides only when two signals agree, and otherwise passes (None) to the fallback, so the
LLM stage sees what is ambiguous:

- agent: a code-only verb ("refactor", "bump", "fix"), an action verb with a code object (a
  file path, an endpoint, "the login page", "our routes"), numbered or sequenced steps, a
  question only the repository can answer ("where do we configure ...?"), a confirmation of an
  agent task the bot proposed, a follow-up request in a thread the agent worked in;
- direct: a general question or explanation request with no reference to this team's code or
  systems, a question about a pasted snippet, chit-chat, declining a proposal;
- command: thanks and greetings the patterns stage did not catch ("perfect, thanks!").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.db.repositories import Runs
from bot.hookspecs import hookimpl
from bot.types import Conversation, EngineAPI, HistoryEntry, Message, Route, RouteDecision

STAGE = "heuristics"
#: Confidence of a rule that rarely misfires (a code-only verb, a confirmed proposal).
SURE = 0.92
#: Confidence of a rule where two weaker signals agree (an action verb and a code object).
LIKELY = 0.85
#: Replies this short (in words) may be read against the thread ("ok", "yes please").
SHORT_REPLY_WORDS = 12
#: Small talk and thanks are this short; longer lines carry a request or a question.
SMALL_TALK_WORDS = 8
#: How many of the thread's last messages a short reply is read against.
THREAD_LOOKBACK = 4
#: Characters of the request and of the proposal carried into a confirmed agent task.
TASK_CHARS = 1_500

_I = re.IGNORECASE

# -- the message's shape ---------------------------------------------------------------------------
MENTION = re.compile(r"^\s*(?:<@[\w.-]+>|@[\w.-]+)[\s,:]*")
CODE_BLOCK = re.compile(r"```.*?(?:```|\Z)", re.S)
INLINE_CODE = re.compile(r"`[^`\n]+`")
SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")
CLAUSE = re.compile(r",\s+")
LIST_MARK = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+")
FILLERS = re.compile(
    r"^(?:(?:hey|hi|ok|okay|ok so|so|great|cool|nice|perfect|alright|also|and|now|then|next|first|finally|"
    r"after that|yes|yeah|yep|sure|thanks|hmm|um|btw|oh|actually)\b[\s,!.:-]*)+", _I)
WORD = re.compile(r"[\w'’-]+|[^\w\s]")

# -- code objects: what a change request acts on ------------------------------------------------------
_EXTENSIONS = (r"py|pyi|ts|tsx|go|rs|java|kt|rb|php|cs|cpp|swift|md|rst|yml|yaml|json|toml|ini|cfg|sql|sh|css|scss|html|"
               r"vue|svelte|tf|lock|txt")
FILE_PATH = re.compile(
    rf"(?<![\w/.-])(?:[\w.-]+/)*[\w-]+\.(?:{_EXTENSIONS})\b"  # README.md, src/app.py
    r"|(?<![\w/.-])(?:[\w.-]+/)+[\w-]+\.jsx?\b"  # web/login.js (a bare name.js is usually a library)
    r"|(?<![\w/.-])(?:[\w.-]+/)+(?=[\s,;:)]|$)"  # a directory: src/, api/handlers/
    r"|(?<![\w/.-])[\w-]+/[\w-]+/[\w./-]+"  # a/b/c
    r"|(?<![\w/.-])\.[a-z][\w-]*(?:\.[\w-]+)*\b"  # a dotfile: .nvmrc, .env.example
    r"|\*\.[a-z]{1,5}\b",  # a glob: *.orig
    _I,
)
#: A path with a directory in it names a file of this repository, not a kind of file.
REPO_PATH = re.compile(
    r"(?<![\w/.-])(?:[\w.-]+/)+[\w-]+\.[a-z]{1,5}\b|(?<![\w/.-])[\w.-]+/[\w.-]+/[\w./-]*", _I)
ROUTE_PATH = re.compile(r"(?<![\w/])/[a-z][\w-]*(?:/[\w{}:.-]+)*", _I)
#: A snake_case name outside backticks: this team's function or test, not a library's API.
IDENTIFIER = re.compile(r"\b[a-z][a-z0-9]*_[a-z0-9_]+\b")
_ARTIFACTS = (
    r"(?:endpoints?|apis?|routes?|handlers?|services?|servers?|workers?|jobs?|cron|scripts?|modules?|packages?|"
    r"functions?|methods?|class(?:es)?|components?|pages?|forms?|buttons?|modals?|views?|templates?|models?|"
    r"serializers?|schemas?|tables?|columns?|fields?|index(?:es)?|migrations?|quer(?:y|ies)|tests?|specs?|"
    r"fixtures?|configs?|configuration|settings|env vars?|flags?|dependenc(?:y|ies)|deps|readme|changelog|docs|"
    r"documentation|docstrings?|type hints|imports|logging|logs?|error messages?|validation|cli|ui|frontend|"
    r"backend|clients?|sdk|repo|repository|codebase|code|branch(?:es)?|prs?|pull requests?|builds?|pipelines?|"
    r"workflows?|ci|dockerfile|containers?|makefile|linter|cache|queues?|webhooks?|receivers?|exporters?|"
    r"importers?|parsers?|scheduler|middleware|database|db|app|project|site|loader|logic|steps?|helpers?|"
    r"utils|tooling|cluster|bucket|topic|enum|types?|interfaces?|signup|login|checkout|dashboard|dags?|pods?|"
    r"charts?|layers?|flows?|features?|loops?|benchmarks?|box(?:es)?|inputs?|toggles?|"
    r"dropdowns?|menus?|header|footer|sidebar|navbar|dialogs?|banners?|links?|icons?|screens?|limiter|"
    r"secrets?|keys?|tokens?|variables?|constants?|errors?|warnings?|matrix|lockfile|image|tasks?)"
)
#: An artifact pinned down as this team's: "the login page", "our routes", "every endpoint".
#: Up to a few modifiers between a determiner and its noun ("the new rate limiter"), never
#: across a preposition or another article ("the difference between a view").
_MODIFIERS = r"(?:(?!(?:a|an|the|of|between|and|or|to|for|in|on|with|from|by|vs|than|like)\b)[\w.`'/-]+\s+)"
OWNED = re.compile(rf"\b(?:the|our|my|that|these|those|all|every|each)\s+{_MODIFIERS}{{0,3}}?{_ARTIFACTS}\b", _I)
#: With no snippet pasted, "this function" is the team's code too.
OWNED_THIS = re.compile(rf"\bthis\s+{_MODIFIERS}{{0,2}}?{_ARTIFACTS}\b", _I)
ARTIFACT = re.compile(rf"\b{_ARTIFACTS}\b", _I)
#: Words that only ever name something in a repository.
REPO_WORDS = re.compile(
    r"\b(?:readme|changelog|migrations?|dockerfile|makefile|pull requests?|prs?|codebase|repo|repository|"
    r"tsconfig|pyproject|tests?|test suite)\b", _I)

# -- requests -------------------------------------------------------------------------------------------
#: Verbs that only mean work on code when said to a coding bot.
_CODE_VERBS = (
    r"fix|refactor|implement|rename|bump|upgrade|downgrade|migrate|lint|deploy|revert|rebase|commit|scaffold|"
    r"debug|profile|backfill|reproduce|patch|deprecate|optimi[sz]e|vendor|clean ?up|tidy up|speed up|"
    r"get rid of|look into|investigate|port|dockeri[sz]e|containeri[sz]e|parallelize"
)
#: Verbs that mean work on code when they act on a code object.
_OBJECT_VERBS = (
    r"add|update|change|run|open|remove|delete|drop|replace|swap|move|convert|install|uninstall|enable|disable|"
    r"configure|set ?up|write|rewrite|create|generate|make|build|check|document|use|turn (?:on|off)|split|"
    r"extract|inline|increase|decrease|reduce|raise|lower|sort|format|merge|push|tag|integrate|wire up|hook up|"
    r"expose|handle|support|allow|prevent|skip|go through|get|put|restore|limit|validate|sanitize|wrap|rework|"
    r"finish|complete|adjust|tweak|modify|edit|append|insert|include|exclude|pin|unpin|stub|mock|seed|"
    r"regenerate|rebuild|restart|squash|switch|look at|rollback|roll back|set"
)
#: Verbs that repeat the agent's last work: they need a thread the agent worked in.
_AGAIN_VERBS = r"retry|rerun|re-run|try again|try it again|do the same|same for|do it again"
#: Verbs that make something new; with them a code object must be this team's ("write a function"
#: alone is a chat answer).
GENERATIVE = re.compile(r"^(?:write|rewrite|create|generate|make|build)$", _I)
POLITE = (
    r"(?P<polite>(?:please|pls|plz|kindly|(?:can|could|would|will)\s+(?:you|u)|(?:i|we)(?:\s+|'|’)(?:need|want|d like|"
    r"would like)\s+(?:you\s+)?to|we\s+(?:should|must|need to|have to)|go ahead and|let'?s|feel free to|"
    r"you\s+(?:can|could|should))\s+(?:please\s+|pls\s+|also\s+|just\s+|quickly\s+|now\s+|maybe\s+)*)?"
)
#: "run me through ...", "get me ...": the person wants something told, not done.
_NOT_FOR_ME = r"(?!\s+(?:me|us)\b)"
LEADING_REQUEST = re.compile(
    rf"^{POLITE}(?P<verb>{_CODE_VERBS}|{_AGAIN_VERBS}|{_OBJECT_VERBS})\b{_NOT_FOR_ME}(?P<rest>.*)$", _I | re.S)
EMBEDDED_REQUEST = re.compile(
    rf"\b(?:(?:can|could|would|will)\s+(?:you|u)|please|pls)\s+(?:please\s+|also\s+|just\s+)*"
    rf"(?P<verb>{_CODE_VERBS}|{_AGAIN_VERBS}|{_OBJECT_VERBS})\b{_NOT_FOR_ME}(?P<rest>.*)$", _I | re.S)
#: "... and fix it": a code-only verb later in an imperative sentence.
LATER_CODE_VERB = re.compile(rf"\b(?:and|then)\s+(?:please\s+)?(?P<verb>{_CODE_VERBS})\b(?P<rest>.*)$", _I | re.S)
CODE_VERB = re.compile(rf"^(?:{_CODE_VERBS})$", _I)
AGAIN_VERB = re.compile(rf"^(?:{_AGAIN_VERBS})$", _I)
#: "i need a cron job that ...": a wish for a code artifact.
NEED = re.compile(r"^(?:i|we)(?:\s+|'|’)(?:need|want|d like|would like)\s+(?:a|an|some|the)\s", _I)
#: A sequence of steps: "first ..., then ...", or at least two numbered or bulleted lines.
SEQUENCE = re.compile(r"\bfirst\b.*\bthen\b|\bthen\b.*\b(?:finally|and then|after that)\b", _I | re.S)

# -- questions ---------------------------------------------------------------------------------------
QUESTION_START = re.compile(
    r"^(?:(?:what|what's|whats|why|how|how's|when|where|who|whom|which|any|anyone|anybody|difference|tl;?dr|"
    r"roughly|quick question)\b|(?:is|are|was|were|does|do|did|can|could|should|would|will|has|have|isn't|"
    r"aren't|doesn't|don't)\s+\S+\s+\S)", _I)
#: Asking for knowledge in the imperative: "explain ...", "ELI5 ...", "tell me a joke".
KNOWLEDGE = re.compile(
    r"^(?:explain|describe|summari[sz]e|compare|define|eli5|tell me|recommend|suggest|walk me through|"
    r"help me understand|give me|show me|write me)\b", _I)
#: A generic piece of code asked for in chat, not for this repository.
GENERIC_CODE = re.compile(
    r"^(?:write|give me|show me)\s+(?:me\s+)?(?:a|an|some)\s+(?:\w+\s+){0,2}?"
    r"(?:function|regex|one-liner|snippet|example|query|command|class|decorator)\b", _I)
#: Questions only the repository (or the running system) can answer.
REPO_LOOKUP = re.compile(
    r"\bwhere\s+(?:do|does|did|is|are)\s+(?:we|our)\b|\b(?:do|does|did)\s+we\s+(?:have|use|call|send|store|"
    r"handle|support|still|ever|configure|set)\b|\bare\s+we\s+(?:on|using|still)\b|\bin\s+our\s+(?:code|"
    r"codebase|repo|repository|project)\b|\b(?:still\s+)?(?:used|imported|called|referenced)\s+anywhere\b"
    r"|\bwhich\s+\w+\s+(?:use|uses|call|calls|read|reads|write|writes|import|imports|depend|depends)\b|\bwhich\s+\w+\s+(?:does|do|did)\s+"
    r"(?:the|our)\b|\bfind\s+where\b|\bwhere\s+(?:is|are)\s+the\s+[^?]*\b(?:read|defined|set|configured|"
    r"implemented|used|called|stored|created|handled|built|loaded)\b|\b(?:somewhere|anywhere)\s+in\s+(?:the|"
    r"our|this)\s+(?:code|codebase|repo|repository|project)\b|\bin\s+(?:this|our)\s+(?:repo|repository|"
    r"codebase|project)\b", _I)
#: Signs a question is about this team's things: "we", "anywhere", "which tests ...", "who wrote".
TEAM_SPECIFIC = re.compile(
    r"\b(?:we|our|us|ours|anywhere|somewhere)\b|\bwhich\s+\w+s\b|\bwho\s+(?:wrote|owns|changed|added|broke|"
    r"maintains|touched|removed|merged|approved)\b", _I)
#: Something is wrong with this team's system: the answer depends on its state.
TROUBLE = re.compile(
    r"\b(?:fail(?:s|ed|ing|ure)?|broken|breaks?|broke|crash(?:es|ed|ing)?|flaky|slow(?:er)?|"
    r"hangs?|hanging|time[sd]? out|timing out|timeouts?|leaks?|regress(?:ed|ion)?|wrong|"
    r"(?:does|did)n'?t work|not working|stopped working|off by|still)\b", _I)
ENVIRONMENT = re.compile(r"\b(?:on|in|from)\s+(?:main|master|ci|prod|production|staging)\b|\bright now\b|\blately\b", _I)

# -- small talk and short replies ---------------------------------------------------------------------
THANKS = re.compile(r"\b(?:thanks|thank (?:you|u)|thx|tysm|ty|ta|cheers|much appreciated|appreciate it)\b|🙏", _I)
GREETING = re.compile(
    r"^(?:hi|hello|hey|heya|hiya|yo|howdy|gm|morning|good (?:morning|afternoon|evening))\b[\s\W]*\w*[\s\W]*$", _I)
#: Hesitations before a short reply: "hmm ok, do it".
HESITATION = re.compile(r"^(?:hmm+|um+|uh+|well|oh|ah|alright)\b[\s,.!-]*", _I)
CONTRAST = re.compile(r"\b(?:but|still|though|however|except|although)\b", _I)
CHIT_CHAT = re.compile(
    r"^(?:how'?s it going|how are (?:you|u)|what'?s up|sup\b|tell me a joke|good ?night|gn\b|bye|see (?:you|ya)|"
    r"have a (?:good|nice|great)|happy \w+|brb|afk|gtg|lol|lmao|rofl|haha\w*|heh|hehe|wow|omg|ugh|"
    r"(?:you'?re|you are|ur) (?:a |the )?(?:lifesaver|life saver|awesome|amazing|great|best|star|hero|genius|legend)|"
    r"you rock|(?:nice|good|great|awesome|amazing) (?:work|job|stuff)|well done|kudos|good luck|what can you do|"
    r"i'?m (?:so |really |very )?(?:tired|bored|hungry|sleepy|exhausted|excited|happy|sad|done))", _I)
AFFIRM = re.compile(
    r"^(?:ok(?:ay)?|k|yes|yep|yeah|yup|ya|sure|go|go ahead|go for it|do it|please do|yes please|ship it|"
    r"sounds good|lgtm|let'?s do it|let'?s go|absolutely|definitely|of course|proceed|approved|👍|✅|🚀|👌)"
    r"(?:\W|$)", _I)
#: Acknowledgements that agree to nothing in particular ("ok", "got it", "nice").
ACK = re.compile(
    r"^(?:(?:ok(?:ay)?|k|kk|cool|nice|neat|great|perfect|awesome|got it|makes sense|sounds good|interesting|noted|"
    r"hmm+|understood|sure|yes|yep|yeah|right|true|fair|fair enough|👍|👌|🎉|🙌|💯|🔥|🤔)[\s,.!]*)+$", _I)
#: Declining or holding off ("no, leave it for now"); "don't ..." and "stop ..." are left out:
#: they open instructions as often as refusals.
DECLINE = re.compile(
    r"^(?:no|nope|nah|not (?:yet|now|today)|leave it|hold (?:on|off)|skip it|never ?mind|nvm|"
    r"let me (?:check|think|ask))\b", _I)
#: The bot's message ends by offering to start the agent ("Want me to ...?", "reply go ahead").
#: (Not "/agent": the bot's notices and help mention the override without offering anything.)
PROPOSAL = re.compile(
    r"\b(?:want me to|shall i|should i|do you want me to|would you like me to|i can (?:start|send|have) the)\b"
    r"|\breply\s+\**go ahead|\bcoding agent\b[^.?!]*\?", _I)
#: An offer or a question to answer comes at the end of the bot's message; earlier, "should I
#: ...?" may only quote the person's own question.
OFFER_TAIL_CHARS = 300


@dataclass(frozen=True)
class ThreadState:
    """What a short reply answers: the bot's last message, and whether it offered the agent."""

    offers_agent: bool = False
    agent_worked: bool = False
    request: str = ""
    proposal: str = ""


@hookimpl
def route_message(message: Message, conversation: Conversation, engine: EngineAPI) -> RouteDecision | None:
    text = MENTION.sub("", message.text).strip()
    snippet = CODE_BLOCK.search(text) is not None or INLINE_CODE.search(text) is not None
    prose = CODE_BLOCK.sub(" ", text).strip()
    if not prose:
        return None
    words = len(WORD.findall(prose))
    short = words <= SHORT_REPLY_WORDS
    reply = HESITATION.sub("", prose)
    requests = _requests(prose)
    thread = _ThreadReader(engine, conversation)

    if words <= SMALL_TALK_WORDS and "?" not in prose and not CONTRAST.search(prose) and not requests:
        if THANKS.search(prose) and not DECLINE.match(reply) and "thanks" in engine.commands:
            return RouteDecision(Route.COMMAND, STAGE, SURE, "thanks", command="thanks", argument=prose)
        if GREETING.match(prose) and "hello" in engine.commands:
            return RouteDecision(Route.COMMAND, STAGE, SURE, "a greeting", command="hello", argument=prose)

    if short and DECLINE.match(reply) and not requests:
        return RouteDecision(Route.DIRECT, STAGE, SURE, "declines or holds off; answering in chat")
    if short and "?" not in prose and (AFFIRM.match(reply) or ACK.match(prose)):
        state = thread.state()
        if state.offers_agent and AFFIRM.match(reply):
            return _confirmed(message, state)
        if ACK.match(prose):
            return RouteDecision(Route.DIRECT, STAGE, LIKELY, "an acknowledgement; nothing was proposed")

    if _is_sequence(prose):
        return RouteDecision(Route.AGENT, STAGE, SURE, "a sequence of steps to carry out")

    owned = _owned_code(prose, snippet)
    coded = owned or bool(ARTIFACT.search(prose) or ROUTE_PATH.search(prose) or INLINE_CODE.search(prose)
                          or FILE_PATH.search(prose))
    question = _is_question(prose)
    if GENERIC_CODE.match(prose) and not (FILE_PATH.search(prose) or TEAM_SPECIFIC.search(prose)):
        return RouteDecision(Route.DIRECT, STAGE, LIKELY, "asks for a generic piece of code; answering in chat")
    for verb, rest, polite in requests:
        if CODE_VERB.match(verb) and (rest.strip() or polite):
            return RouteDecision(Route.AGENT, STAGE, SURE, f"asks to {verb.lower()}: work on code")
        if AGAIN_VERB.match(verb):
            if short and thread.state().agent_worked:
                return RouteDecision(Route.AGENT, STAGE, SURE, "asks the agent to repeat its work")
            continue
        if owned if GENERATIVE.match(verb) else coded:
            return RouteDecision(Route.AGENT, STAGE, LIKELY, f"asks to {verb.lower()} a code object")
        if short and thread.state().agent_worked:
            return RouteDecision(Route.AGENT, STAGE, LIKELY, f"asks to {verb.lower()}, following the agent's work")

    if REPO_LOOKUP.search(prose) or (question and REPO_PATH.search(prose)):
        return RouteDecision(Route.AGENT, STAGE, LIKELY, "a question only the repository can answer")
    if short and not question and (TROUBLE.search(prose) or "same" in prose.lower()) and thread.state().agent_worked:
        return RouteDecision(Route.AGENT, STAGE, LIKELY, "reports back on the agent's work")
    if NEED.match(prose) and coded:
        return RouteDecision(Route.AGENT, STAGE, LIKELY, "asks for a code artifact")
    if requests:
        return None  # a request with nothing to tell what it acts on: the LLM stage decides

    if short and CHIT_CHAT.match(prose):
        return RouteDecision(Route.DIRECT, STAGE, SURE, "chit-chat")
    if question or KNOWLEDGE.match(prose):
        if _team_specific(prose, snippet, owned):
            return None  # about this team's code or systems: the LLM stage tells which
        reason = "a question about the pasted snippet" if snippet else "a general question"
        return RouteDecision(Route.DIRECT, STAGE, LIKELY, f"{reason}; answering in chat")
    return None


def _team_specific(prose: str, snippet: bool, owned: bool) -> bool:
    """Return whether a question is about this team's code or systems rather than general knowledge."""
    return (owned or FILE_PATH.search(prose) is not None or TEAM_SPECIFIC.search(prose) is not None
            or IDENTIFIER.search(prose) is not None or ENVIRONMENT.search(prose) is not None
            or (TROUBLE.search(prose) is not None and not snippet))


def _requests(prose: str) -> list[tuple[str, str, bool]]:
    """Return (verb, rest of the clause, politely asked) for each request the prose makes."""
    found = []
    for sentence in SENTENCE_END.split(prose):
        sentence = FILLERS.sub("", LIST_MARK.sub("", sentence.strip()))
        if not sentence:
            continue
        asks = _is_question(sentence)
        clauses = [sentence] if asks else [FILLERS.sub("", c) for c in CLAUSE.split(sentence)]
        for clause in clauses:
            match = LEADING_REQUEST.match(clause)
            if match:
                found.append((match["verb"], match["rest"], bool(match["polite"])))
            elif not asks and (later := LATER_CODE_VERB.search(clause)):
                found.append((later["verb"], later["rest"], False))
        embedded = EMBEDDED_REQUEST.search(sentence)
        if embedded:
            found.append((embedded["verb"], embedded["rest"], True))
    return found


def _is_question(prose: str) -> bool:
    """Return whether the prose asks something: a question mark, or a question word first."""
    return "?" in prose or QUESTION_START.match(FILLERS.sub("", prose)) is not None


def _is_sequence(prose: str) -> bool:
    """Return whether the prose lists steps to carry out: numbered lines, or "first ... then ..."."""
    steps = [line for line in prose.splitlines() if LIST_MARK.match(line)]
    if len(steps) >= 2:
        return any(LEADING_REQUEST.match(LIST_MARK.sub("", line)) for line in steps)
    return SEQUENCE.search(prose) is not None and bool(_requests(prose))


def _owned_code(prose: str, snippet: bool) -> bool:
    """Return whether the prose points at this team's code: a path, 'the login page', the README."""
    if FILE_PATH.search(prose) or OWNED.search(prose) or REPO_WORDS.search(prose):
        return True
    return not snippet and OWNED_THIS.search(prose) is not None


def _confirmed(message: Message, state: ThreadState) -> RouteDecision:
    """Return the agent route for a yes to the bot's proposal, carrying the proposed task."""
    if state.agent_worked:  # the agent's own question: its session holds the context
        return RouteDecision(Route.AGENT, STAGE, SURE, "answers the agent's question; continuing its work")
    task = (f"{state.request[:TASK_CHARS]}\n\nAs proposed in this thread: {state.proposal[:TASK_CHARS]}\n\n"
            f"Reply: {message.text}")
    return RouteDecision(Route.AGENT, STAGE, SURE, "confirms the agent task the bot proposed", text=task)


class _ThreadReader:
    """Reads the thread's last messages at most once, and only when a rule needs them."""

    def __init__(self, engine: EngineAPI, conversation: Conversation) -> None:
        self._engine = engine
        self._conversation = conversation
        self._state: ThreadState | None = None

    def state(self) -> ThreadState:
        if self._state is None:
            entries = self._engine.history(self._conversation.id, THREAD_LOOKBACK)
            self._state = _thread_state(entries, ran_agent=self._ran_agent(entries))
        return self._state

    def _ran_agent(self, entries: list[HistoryEntry]) -> bool:
        """Return True if one of these messages asked for the thread's latest agent run (the runs table says)."""
        with self._engine.db.reading() as session:
            latest = Runs(session).in_conversation(self._conversation.id, limit=1)
        return bool(latest) and latest[0].request_message_id in {entry.id for entry in entries}


def _thread_state(entries: list[HistoryEntry], *, ran_agent: bool = False) -> ThreadState:
    """Return what the thread's last bot message says about the agent."""
    last_bot = next((i for i in range(len(entries) - 1, -1, -1) if entries[i].role == "assistant"), None)
    if last_bot is None:
        return ThreadState()
    bot_text = entries[last_bot].text
    tail = bot_text[-OFFER_TAIL_CHARS:]
    asked = next((e for e in reversed(entries[:last_bot]) if e.role == "user"), None)
    agent_worked = ran_agent or (asked is not None and asked.route == "agent")
    offers = PROPOSAL.search(tail) is not None or (agent_worked and "?" in tail)
    return ThreadState(offers_agent=offers, agent_worked=agent_worked,
                       request=asked.text if asked else "", proposal=bot_text)

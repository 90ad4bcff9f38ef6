// The seatbroker admin console: one page, one module, no dependencies. Every action
// is a call to the daemon's JSON API (POST /seatbroker.v1.AdminService/<Method>) with
// the API key kept in this tab's session storage, and says what it did or why not.

const KEY = "seatbroker.key";
const ORG = "seatbroker.org";
const main = document.getElementById("main");
const notice = document.getElementById("notice");
let refreshTimer = null;

// ---- the API ------------------------------------------------------------------

class ApiError extends Error {
  constructor(code, message, httpStatus) {
    super(message);
    this.code = code;
    this.httpStatus = httpStatus;
  }
}

async function api(method, body) {
  const response = await fetch(`/seatbroker.v1.AdminService/${method}`, {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      "Authorization": `Bearer ${sessionStorage.getItem(KEY) || ""}`,
    },
    body: JSON.stringify(body || {}),
    cache: "no-store",
  });
  let answer = {};
  try { answer = await response.json(); } catch { /* an empty or non-JSON answer */ }
  if (!response.ok) {
    throw new ApiError(answer.code || "unknown", answer.message || `HTTP ${response.status}`, response.status);
  }
  return answer;
}

// Every page of a paged listing (AIP-158), up to `pagesMax` pages (for choices, such
// as the members a license may go to).
async function listAll(method, body, field, pagesMax = PAGES_PER_SCREEN) {
  let items = [];
  let pageToken = "";
  for (let page = 0; page < pagesMax; page++) {
    const answer = await api(method, { ...body, pageToken });
    items = items.concat(answer[field] || []);
    pageToken = answer.nextPageToken || "";
    if (!pageToken) break;
  }
  return items;
}

// A listing shows at most this many of the API's pages at once; the pager below it
// goes on with the next page token, or back to where the previous screen started.
const PAGES_PER_SCREEN = 20;
const PAGE_SIZE = "seatbroker.pageSize";
const cursors = new Map();

function cursorOf(key) {
  if (!cursors.has(key)) cursors.set(key, { starts: [""], at: 0, next: "" });
  return cursors.get(key);
}

// The screen of a listing the pager is on; `key` names the listing and its filters.
async function listScreen(key, method, body, field, pagesMax = PAGES_PER_SCREEN) {
  const cursor = cursorOf(key);
  const size = Number(sessionStorage.getItem(PAGE_SIZE)) || 0;
  const sized = size > 0 && method !== "ListAuditEvents" ? { ...body, pageSize: size } : body;
  let items = [];
  let pageToken = cursor.starts[cursor.at];
  try {
    for (let page = 0; page < pagesMax; page++) {
      const answer = await api(method, { ...sized, pageToken });
      items = items.concat(answer[field] || []);
      pageToken = answer.nextPageToken || "";
      if (!pageToken) break;
    }
  } catch (error) {
    // A token the daemon no longer takes: start the listing over.
    if (cursor.at === 0 || error.code !== "invalid_argument") throw error;
    cursors.delete(key);
    return listScreen(key, method, body, field, pagesMax);
  }
  cursor.next = pageToken;
  return items;
}

// Previous / Next over a listing longer than one screen (`reload` shows the screen the
// cursor moved to); nothing for a short one.
function pager(key, shown, reload = route) {
  const cursor = cursorOf(key);
  if (!cursor.next && cursor.at === 0) return null;
  const move = (step) => () => {
    if (step > 0) cursor.starts[cursor.at + 1] = cursor.next;
    cursor.at += step;
    reload();
  };
  return el("div", { class: "pager", role: "navigation", "aria-label": "More of this listing", "data-pager": key },
    el("span", { class: "pager-note" }, cursor.next
      ? `Screen ${cursor.at + 1}: ${shown} shown, and more follow than one screen holds.`
      : `Screen ${cursor.at + 1}, the last: ${shown} shown.`),
    el("button", { type: "button", class: "secondary", "data-page-previous": "", disabled: cursor.at === 0, onclick: move(-1) }, "Previous"),
    el("button", { type: "button", class: "secondary", "data-page-next": "", disabled: !cursor.next, onclick: move(1) }, "Next"));
}

const org = () => sessionStorage.getItem(ORG) || "";

// ---- the page's pieces ----------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function say(message, kind = "ok") {
  notice.textContent = message;
  notice.className = `notice ${kind}`;
}

// Why a call failed, in words a person can act on.
function explain(error) {
  if (!(error instanceof ApiError)) return `The daemon could not be reached: ${error.message}`;
  switch (error.code) {
    case "unauthenticated":
      return `Your key was not accepted (${error.message}). Sign out and sign in with a valid key.`;
    case "permission_denied":
      return `Not allowed: ${error.message}. These pages need an Owner's or Admin's key, or the operator key.`;
    default:
      return error.message;
  }
}

// Runs an action, reporting its result or its failure; returns the answer or null.
async function act(action, success) {
  try {
    const answer = await action();
    if (success) say(typeof success === "function" ? success(answer) : success, "ok");
    return answer;
  } catch (error) {
    say(explain(error), "error");
    return null;
  }
}

function table(headers, rows, id) {
  return el("div", { class: "table-wrap" },
    el("table", { id },
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, "None")))));
}

function card(label, value, id) {
  return el("div", { class: "card" }, el("div", { class: "value", id }, String(value)), el("div", { class: "label" }, label));
}

const productName = (product) => (product === "PRODUCT_KSE" ? "KSE" : product === "PRODUCT_KRE" ? "KRE" : product);
const when = (ms) => (Number(ms) > 0 ? new Date(Number(ms)).toLocaleString() : "-");
const roleName = (role) => (role || "").replace("ROLE_", "").toLowerCase();
const splitEmails = (text) => text.split(/[\s,;]+/).map((e) => e.trim()).filter(Boolean);

function page(title, ...children) {
  main.replaceChildren(el("h1", {}, title), ...children);
}

// ---- License Management ---------------------------------------------------------

let licenseProduct = "PRODUCT_KSE";

async function licensesPage() {
  const usage = await api("GetUsage", { orgId: org(), windowSeconds: 3600 });
  const members = await listAll("ListMembers", { orgId: org() }, "members");
  const listing = `assignments:${org()}:${licenseProduct}`;
  const emails = await listScreen(listing, "ListAssignments", { orgId: org(), product: licenseProduct }, "emails");
  const figures = (usage.products || []).find((p) => p.product === licenseProduct) || {};
  const quota = Number(figures.quota || 0);
  const assigned = Number(figures.assigned || 0);
  const kse = licenseProduct === "PRODUCT_KSE";
  const tab = (product, label) => el("button", {
    type: "button", role: "tab", id: `tab-${productName(product).toLowerCase()}`,
    "aria-selected": String(product === licenseProduct),
    onclick: () => { licenseProduct = product; route(); },
  }, label);
  const transferTargets = members.map((m) => m.email).filter((e) => !emails.includes(e));
  const rows = emails.map((email) => {
    const select = el("select", { "aria-label": `Transfer ${email}'s license to`, "data-transfer-to": email },
      transferTargets.map((target) => el("option", { value: target }, target)));
    return el("tr", { "data-email": email },
      el("td", {}, email),
      el("td", {}, el("div", { class: "row-actions" },
        el("button", { type: "button", class: "danger", "data-remove": email, onclick: () => unassign(email) }, "Remove"),
        transferTargets.length ? select : null,
        transferTargets.length ? el("button", { type: "button", class: "secondary", "data-transfer": email, onclick: () => transfer(email, select.value) }, "Transfer") : null)));
  });
  const form = el("form", { id: "assign-form", class: "stacked", hidden: true, onsubmit: assign },
    el("label", { for: "assign-emails" }, "Emails (one per line, or separated by commas)"),
    el("textarea", { id: "assign-emails", name: "emails", required: true, spellcheck: "false" }),
    el("button", { type: "submit", id: "assign-submit" }, "Assign License"));
  page("License Management",
    el("div", { role: "tablist", "aria-label": "Products" }, tab("PRODUCT_KSE", "KSE (per-User)"), tab("PRODUCT_KRE", "KRE (Floating)")),
    el("div", { class: "cards" },
      card(kse ? "KSE seats (quota)" : "KRE parallel sessions (quota)", quota, "quota"),
      card("Assigned users", assigned, "assigned"),
      card("Active sessions", figures.activeSessions || 0, "active"),
      kse ? card("Seats left", Math.max(0, quota - assigned), "left") : null),
    el("p", { class: "muted" }, kse
      ? "KSE is per user: the number of licensed users cannot exceed the quota."
      : "KRE is floating: any number of users may be licensed; parallel sessions cannot exceed the quota."),
    el("h2", {}, "Licensed Users"),
    el("button", { type: "button", id: "assign-open", onclick: () => { form.hidden = false; form.querySelector("textarea").focus(); } }, "Assign License"),
    form,
    el("ul", { id: "assign-results", class: "results" }),
    table(["Email", "Actions"], rows, "licensed-users"),
    pager(listing, emails.length));
}

async function assign(event) {
  event.preventDefault();
  const emails = splitEmails(document.getElementById("assign-emails").value);
  const name = productName(licenseProduct);
  if (!emails.length) return say("Enter at least one email.", "error");
  try {
    const answer = await api("AssignLicenses", { orgId: org(), product: licenseProduct, emails });
    const lines = (answer.results || []).map((r) => r.outcome === "ASSIGNMENT_OUTCOME_ALREADY_ASSIGNED"
      ? `${r.email}: already had a ${name} license` : `${r.email}: ${name} license assigned`);
    await route();
    document.getElementById("assign-results").replaceChildren(...lines.map((l) => el("li", { class: "done" }, l)));
    say(`Assigned ${name} to ${emails.length} ${emails.length === 1 ? "user" : "users"}; ${answer.assignedTotal} hold ${name} now.`);
  } catch (error) {
    say(await explainAssignRefusal(error, emails), "error");
  }
}

// An assignment is all or nothing: say which email stopped it, and the seats left.
async function explainAssignRefusal(error, emails) {
  if (!(error instanceof ApiError)) return explain(error);
  if (/is not a member/.test(error.message)) {
    return `Nothing was assigned: ${error.message.replace(/; add them with AddMember first/, "")}. Add them on the Members page first.`;
  }
  if (error.code === "resource_exhausted" && licenseProduct === "PRODUCT_KSE") {
    try {
      const usage = await api("GetUsage", { orgId: org() });
      const kse = (usage.products || []).find((p) => p.product === "PRODUCT_KSE") || {};
      const left = Math.max(0, Number(kse.quota || 0) - Number(kse.assigned || 0));
      return `Nothing was assigned: the KSE quota is full for ${emails.length} more (${kse.assigned} of ${kse.quota} seats assigned, ${left} left). Remove a license or ask the vendor for more seats.`;
    } catch { /* the refusal alone */ }
  }
  return `Nothing was assigned: ${explain(error)}`;
}

async function unassign(email) {
  const name = productName(licenseProduct);
  const answer = await act(() => api("UnassignLicenses", { orgId: org(), product: licenseProduct, emails: [email] }));
  if (answer) {
    await route();
    say(`Removed ${email}'s ${name} license${answer.sessionsEnded ? `; ${answer.sessionsEnded} session(s) ended` : ""}.`);
  }
}

async function transfer(from, to) {
  if (!to) return say("Choose the member to transfer the license to.", "error");
  const name = productName(licenseProduct);
  const answer = await act(() => api("TransferLicense", { orgId: org(), product: licenseProduct, fromEmail: from, toEmail: to }));
  if (answer) {
    await route();
    say(`Transferred the ${name} license from ${from} to ${to}${answer.sessionsEnded ? `; ${answer.sessionsEnded} session(s) ended` : ""}.`);
  }
}

// ---- Members --------------------------------------------------------------------

const ROLES = ["ROLE_OWNER", "ROLE_ADMIN", "ROLE_MEMBER"];

async function membersPage() {
  const listing = `members:${org()}`;
  const members = await listScreen(listing, "ListMembers", { orgId: org() }, "members");
  const rows = members.map((m) => {
    const select = el("select", { "aria-label": `Role of ${m.email}`, "data-role-of": m.email },
      ROLES.map((r) => el("option", { value: r, selected: r === m.role }, roleName(r))));
    select.addEventListener("change", () => setRole(m.email, select.value));
    return el("tr", { "data-email": m.email },
      el("td", {}, m.email), el("td", {}, select),
      el("td", {}, el("button", { type: "button", class: "danger", "data-remove-member": m.email, onclick: () => removeMember(m.email) }, "Remove")));
  });
  page("Members",
    el("form", { id: "add-member", onsubmit: addMember },
      el("label", {}, "Email", el("input", { id: "member-email", type: "email", required: true })),
      el("label", {}, "Role", el("select", { id: "member-role" }, ROLES.map((r) => el("option", { value: r, selected: r === "ROLE_MEMBER" }, roleName(r))))),
      el("button", { type: "submit", id: "add-member-submit" }, "Add member")),
    table(["Email", "Role", "Actions"], rows, "members"),
    pager(listing, members.length));
}

async function addMember(event) {
  event.preventDefault();
  const email = document.getElementById("member-email").value.trim();
  const role = document.getElementById("member-role").value;
  if (await act(() => api("AddMember", { orgId: org(), email, role }))) {
    await route();
    say(`Added ${email} as ${roleName(role)}.`);
  }
}

async function setRole(email, role) {
  if (await act(() => api("SetRole", { orgId: org(), email, role }))) {
    say(`${email} is now ${roleName(role)}.`);
  } else {
    await route();
  }
}

async function removeMember(email) {
  if (!window.confirm(`Remove ${email}? Their API keys are revoked, their licenses removed and their sessions end.`)) {
    return say(`${email} was kept.`);
  }
  const answer = await act(() => api("RemoveMember", { orgId: org(), email }));
  if (answer) {
    await route();
    say(`Removed ${email}: ${answer.keysRevoked || 0} key(s) revoked, ${answer.sessionsEnded || 0} session(s) ended.`);
  }
}

// ---- API keys -------------------------------------------------------------------

async function keysPage(created) {
  const listing = `keys:${org()}`;
  const keys = await listScreen(listing, "ListApiKeys", { orgId: org() }, "keys");
  const rows = keys.map((k) => el("tr", { "data-key-id": k.keyId },
    el("td", {}, el("code", {}, k.keyId)), el("td", {}, k.email), el("td", {}, k.label), el("td", {}, when(k.createdAtUnixMs)),
    el("td", {}, el("button", { type: "button", class: "danger", "data-revoke": k.keyId, onclick: () => revokeKey(k.keyId) }, "Revoke"))));
  page("API keys",
    el("form", { id: "create-key", onsubmit: createKey },
      el("label", {}, "Member email", el("input", { id: "key-email", type: "email", required: true })),
      el("label", {}, "Label", el("input", { id: "key-label", type: "text" })),
      el("button", { type: "submit", id: "create-key-submit" }, "Create key")),
    created ? secretBox(created) : null,
    table(["Key", "Member", "Label", "Created", "Actions"], rows, "keys"),
    pager(listing, keys.length));
}

// The new key, shown this once: the daemon keeps only its hash.
function secretBox(created) {
  const copy = el("button", { type: "button", id: "copy-secret", onclick: async () => {
    try { await navigator.clipboard.writeText(created.secret); say("Key copied to the clipboard."); } catch {
      window.getSelection().selectAllChildren(document.getElementById("new-secret"));
      say("Copying was refused by the browser: the key is selected, copy it with Ctrl+C.", "error");
    }
  } }, "Copy");
  return el("div", { class: "secret", role: "group", "aria-label": "New API key" },
    el("span", {}, `New key for ${created.key.email}, shown once:`), el("code", { id: "new-secret" }, created.secret), copy);
}

async function createKey(event) {
  event.preventDefault();
  const email = document.getElementById("key-email").value.trim();
  const label = document.getElementById("key-label").value.trim();
  const answer = await act(() => api("CreateApiKey", { orgId: org(), email, label }));
  if (answer) {
    await keysPage(answer);
    say(`Created key ${answer.key.keyId} for ${email}. Copy it now: it is not shown again.`);
  }
}

async function revokeKey(keyId) {
  if (!window.confirm(`Revoke key ${keyId}? Sessions acquired with it end.`)) return say(`Key ${keyId} was kept.`);
  if (await act(() => api("RevokeApiKey", { orgId: org(), keyId }))) {
    await route();
    say(`Revoked key ${keyId}.`);
  }
}

// ---- Sessions -------------------------------------------------------------------

async function sessionsPage() {
  const listing = `sessions:${org()}`;
  const sessions = await listScreen(listing, "ListSessions", { orgId: org() }, "sessions");
  const rows = sessions.map((s) => el("tr", { "data-lease": s.leaseId },
    el("td", {}, s.email), el("td", {}, s.hostname), el("td", {}, s.engineId), el("td", {}, s.label),
    el("td", {}, when(s.acquiredAtUnixMs)), el("td", {}, when(s.expiresAtUnixMs)),
    el("td", {}, el("button", { type: "button", class: "danger", "data-terminate": s.leaseId, onclick: () => terminate(s) }, "Terminate"))));
  page("Sessions",
    el("p", { class: "muted" }, `Live sessions, refreshed every 5 seconds. ${sessions.length} now.`),
    table(["Member", "Host", "Engine", "Label", "Since", "Expires", "Actions"], rows, "sessions"),
    pager(listing, sessions.length));
  refreshTimer = setTimeout(() => { if (location.hash === "#/sessions") route(true); }, 5000);
}

async function terminate(session) {
  if (await act(() => api("TerminateSession", { orgId: org(), leaseId: session.leaseId }))) {
    await route();
    say(`Terminated ${session.email}'s session on ${session.hostname || session.engineId}.`);
  }
}

// ---- Usage ----------------------------------------------------------------------

// The ranges of GetUsageSeries; the daemon picks the resolution (a minute for an hour,
// ten minutes for a day, an hour for a week).
const RANGES = [["USAGE_RANGE_HOUR", "Hour"], ["USAGE_RANGE_DAY", "Day"], ["USAGE_RANGE_WEEK", "Week"]];
let usageRange = "USAGE_RANGE_DAY";

async function usagePage() {
  const products = ["PRODUCT_KSE", "PRODUCT_KRE"];
  const series = await Promise.all(products.map((product) => api("GetUsageSeries", { orgId: org(), product, range: usageRange })));
  const rangeName = RANGES.find(([range]) => range === usageRange)[1].toLowerCase();
  const tab = ([range, label]) => el("button", {
    type: "button", role: "tab", id: `usage-tab-${label.toLowerCase()}`, "aria-selected": String(range === usageRange),
    onclick: () => { usageRange = range; route(); },
  }, label);
  const sections = series.map((answer, i) => {
    const points = answer.points || [];
    const quota = Number(answer.quota || 0);
    const peak = Math.max(0, ...points.map((p) => Number(p.peakSessions || 0)));
    const denials = points.reduce((sum, p) => sum + Number(p.denials || 0), 0);
    const verdict = denials > 0 || (quota > 0 && peak >= quota)
      ? `Sessions reached the quota of ${quota} in the last ${rangeName}${denials ? ` and ${denials} acquire(s) were refused` : ""}: consider more seats.`
      : `Peak in the last ${rangeName}: ${peak} of ${quota}. The quota suffices.`;
    const name = productName(products[i]);
    return el("section", { "data-product": products[i] },
      el("h2", {}, `${name}: now ${answer.activeSessions || 0} active of ${quota}`),
      el("p", { class: "verdict" }, verdict),
      seriesChart(answer, `${name}: active sessions against the quota, and refused acquires, over the last ${rangeName}`));
  });
  const since = Number(series[0].keptSinceUnixMs || 0);
  page("Usage",
    el("div", { role: "tablist", "aria-label": "Range" }, RANGES.map(tab)),
    el("p", { class: "muted" },
      "Bars: the peak of active sessions in each period; line: the quota; red bars below: acquires refused for lack of a seat. ",
      `The daemon keeps these figures in memory since it started (${when(since)}): a restart starts them afresh.`),
    ...sections);
}

// An SVG chart of a usage series: a bar per point (its peak of active sessions, red
// past the quota), the quota as a stepped line, and the denials as bars in a strip
// below. Points before the daemon started are shaded.
function seriesChart(answer, title) {
  const ns = "http://www.w3.org/2000/svg";
  const points = answer.points || [];
  const width = 640, left = 44, right = 8, top = 8, plotHeight = 150, gap = 22, denialHeight = 40;
  const height = top + plotHeight + gap + denialHeight + 18;
  const start = Number(answer.startUnixMs), end = Number(answer.endUnixMs), resolution = Number(answer.resolutionMs);
  const span = Math.max(1, end - start);
  const x = (ms) => left + ((ms - start) / span) * (width - left - right);
  const quotaOf = (p) => (p.quota === undefined || p.quota === null ? null : Number(p.quota));
  const scale = Math.max(1, Number(answer.quota || 0), ...points.map((p) => Math.max(Number(p.peakSessions || 0), quotaOf(p) || 0))) * 1.1;
  const y = (value) => top + plotHeight - (value / scale) * plotHeight;
  const maxDenials = Math.max(1, ...points.map((p) => Number(p.denials || 0)));
  const denialTop = top + plotHeight + gap;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", title);
  svg.setAttribute("data-points", String(points.length));
  const shape = (name, attributes, text) => {
    const node = document.createElementNS(ns, name);
    for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  const since = Number(answer.keptSinceUnixMs || 0);
  if (since > start) {
    shape("rect", { x: left, y: top, width: Math.max(0, x(Math.min(since, end)) - left), height: plotHeight, class: "no-data" });
  }
  shape("line", { x1: left, y1: y(0), x2: width - right, y2: y(0), class: "axis" });
  shape("text", { x: left - 4, y: y(0) + 4, "text-anchor": "end" }, "0");
  shape("text", { x: left - 4, y: top + 10, "text-anchor": "end" }, String(Math.floor(scale)));
  const barWidth = Math.max(1, x(start + resolution) - x(start) - 1);
  let quotaPath = "";
  let quotaKnown = false;
  for (const p of points) {
    const at = Number(p.startUnixMs);
    const peak = Number(p.peakSessions || 0);
    const quota = quotaOf(p);
    const bar = shape("rect", { x: x(at), y: y(peak), width: barWidth, height: y(0) - y(peak),
      class: `point ${quota !== null && peak > quota ? "bar-over" : "bar-used"}` });
    const label = `${when(at)}: peak ${peak}${quota !== null ? ` of ${quota}` : ""}, ${Number(p.denials || 0)} refused`;
    bar.append(Object.assign(document.createElementNS(ns, "title"), { textContent: label }));
    // The quota steps from one period to the next; it is not drawn where unknown.
    if (quota !== null) {
      quotaPath += `${quotaKnown ? "L" : "M"}${x(at)},${y(quota)}L${x(at + resolution)},${y(quota)}`;
    }
    quotaKnown = quota !== null;
    const denied = Number(p.denials || 0);
    if (denied > 0) {
      const h = (denied / maxDenials) * denialHeight;
      shape("rect", { x: x(at), y: denialTop + denialHeight - h, width: barWidth, height: h, class: "bar-denied" });
    }
  }
  if (quotaPath) shape("path", { d: quotaPath, class: "quota-line" });
  shape("line", { x1: left, y1: denialTop + denialHeight, x2: width - right, y2: denialTop + denialHeight, class: "axis" });
  shape("text", { x: left - 4, y: denialTop + 10, "text-anchor": "end" }, String(maxDenials));
  shape("text", { x: left, y: denialTop - 6 }, "Refused acquires");
  const tick = (ms) => {
    const date = new Date(ms);
    if (resolution >= 3600000) return date.toLocaleDateString(undefined, { month: "short", day: "numeric" });
    const time = date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
    return span > 12 * 3600000 ? `${date.toLocaleDateString(undefined, { weekday: "short" })} ${time}` : time;
  };
  shape("text", { x: left, y: height - 4 }, tick(start));
  shape("text", { x: (left + width - right) / 2, y: height - 4, "text-anchor": "middle" }, tick(start + span / 2));
  shape("text", { x: width - right, y: height - 4, "text-anchor": "end" }, tick(end));
  return el("div", { class: "chart" }, svg);
}

// ---- Audit ----------------------------------------------------------------------

let auditEvents = [];

async function auditPage() {
  const dayAgo = new Date(Date.now() - 86400000);
  const local = (date) => new Date(date.getTime() - date.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  page("Audit",
    el("form", { id: "audit-form", onsubmit: loadAudit },
      el("label", {}, "From", el("input", { id: "audit-from", type: "datetime-local", value: local(dayAgo) })),
      el("label", {}, "To", el("input", { id: "audit-to", type: "datetime-local" })),
      el("label", {}, "Kind", el("input", { id: "audit-kind", type: "text", placeholder: "e.g. licenses_assigned" })),
      el("label", {}, "Member", el("input", { id: "audit-member", type: "text", placeholder: "email" })),
      el("button", { type: "submit", id: "audit-load" }, "Show events"),
      el("button", { type: "button", class: "secondary", id: "audit-csv", onclick: exportCsv }, "Export CSV")),
    el("div", { id: "audit-table" }));
  await loadAudit();
}

async function loadAudit(event) {
  if (event) event.preventDefault();
  const from = document.getElementById("audit-from").value;
  const to = document.getElementById("audit-to").value;
  const kind = document.getElementById("audit-kind").value.trim();
  const member = document.getElementById("audit-member").value.trim().toLowerCase();
  const body = { orgId: org(), fromUnixMs: from ? String(new Date(from).getTime()) : "0", toUnixMs: to ? String(new Date(to).getTime()) : "0", limit: 1000 };
  const listing = `audit:${org()}:${body.fromUnixMs}:${body.toUnixMs}`;
  // A new range starts at its first screen; the pager moves through it.
  if (event) cursors.delete(listing);
  const events = await act(() => listScreen(listing, "ListAuditEvents", body, "events", 10));
  if (!events) return;
  auditEvents = events.filter((e) => (!kind || e.kind.includes(kind)) && (!member || (e.email || "").includes(member) || (e.actor || "").includes(member)));
  // The audit page keeps its form: its pager reloads only the events.
  const auditPager = pager(listing, events.length, () => loadAudit());
  document.getElementById("audit-table").replaceChildren(table(["When", "Kind", "Product", "Member", "Actor", "Detail"],
    auditEvents.map((e) => el("tr", {}, el("td", {}, when(e.atUnixMs)), el("td", {}, e.kind), el("td", {}, productName(e.product)),
      el("td", {}, e.email), el("td", {}, e.actor), el("td", {}, e.detail))), "audit"), auditPager || "");
  say(`${auditEvents.length} event(s) shown.`);
}

function exportCsv() {
  // A leading =, +, - or @ would be a formula to a spreadsheet: prefix it with '.
  const cell = (value) => {
    let text = String(value ?? "");
    if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`;
    return `"${text.replace(/"/g, '""')}"`;
  };
  const columns = ["atUnixMs", "orgId", "kind", "product", "email", "leaseId", "generation", "engineId", "actor", "detail"];
  const lines = [columns.join(",")].concat(auditEvents.map((e) => columns.map((c) => cell(e[c])).join(",")));
  const link = el("a", { href: URL.createObjectURL(new Blob([lines.join("\r\n")], { type: "text/csv" })), download: `audit-${org()}.csv` });
  document.body.append(link);
  link.click();
  link.remove();
  say(`Exported ${auditEvents.length} event(s) as CSV.`);
}

// ---- Organizations (operator) -----------------------------------------------------

async function orgsPage() {
  const listing = "orgs";
  const orgs = await listScreen(listing, "ListOrganizations", {}, "organizations");
  const rows = orgs.map((o) => {
    const kse = el("input", { type: "number", min: 0, value: o.quota?.kseSeats ?? 0, "aria-label": `KSE seats of ${o.orgId}` });
    const kre = el("input", { type: "number", min: 0, value: o.quota?.kreSessions ?? 0, "aria-label": `KRE sessions of ${o.orgId}` });
    const expires = el("input", { type: "date", "aria-label": `License expiry of ${o.orgId}`, value: Number(o.quota?.expiresAtUnixMs) > 0 ? new Date(Number(o.quota.expiresAtUnixMs)).toISOString().slice(0, 10) : "" });
    return el("tr", { "data-org": o.orgId },
      el("td", {}, o.orgId), el("td", {}, o.displayName), el("td", {}, o.memberCount),
      el("td", {}, kse), el("td", {}, kre), el("td", {}, expires),
      el("td", {}, el("div", { class: "row-actions" },
        el("button", { type: "button", onclick: () => setQuota(o.orgId, kse.value, kre.value, expires.value) }, "Save quota"),
        el("button", { type: "button", class: "secondary", onclick: () => { sessionStorage.setItem(ORG, o.orgId); showWho(); location.hash = "#/licenses"; } }, "Manage"))));
  });
  page("Organizations",
    el("form", { id: "create-org", onsubmit: createOrg },
      el("label", {}, "Id", el("input", { id: "org-id", required: true, pattern: "[a-z][a-z0-9-]{0,62}" })),
      el("label", {}, "Name", el("input", { id: "org-name" })),
      el("label", {}, "Owner email", el("input", { id: "org-owner", type: "email", required: true })),
      el("label", {}, "KSE seats", el("input", { id: "org-kse", type: "number", min: 0, value: 5 })),
      el("label", {}, "KRE sessions", el("input", { id: "org-kre", type: "number", min: 0, value: 5 })),
      el("button", { type: "submit" }, "Create organization")),
    table(["Id", "Name", "Members", "KSE seats", "KRE sessions", "Expires", "Actions"], rows, "orgs"),
    pager(listing, orgs.length));
}

async function createOrg(event) {
  event.preventDefault();
  const value = (id) => document.getElementById(id).value.trim();
  const body = { orgId: value("org-id"), displayName: value("org-name"), ownerEmail: value("org-owner"),
    quota: { kseSeats: Number(value("org-kse")), kreSessions: Number(value("org-kre")) } };
  if (await act(() => api("CreateOrganization", body))) {
    await route();
    say(`Created ${body.orgId} with owner ${body.ownerEmail}. Create the owner's key on its API keys page (Manage).`);
  }
}

async function setQuota(orgId, kse, kre, expires) {
  const body = { orgId, kseSeats: Number(kse), kreSessions: Number(kre) };
  if (expires) body.expiresAtUnixMs = String(new Date(`${expires}T23:59:59Z`).getTime());
  if (await act(() => api("SetQuota", body))) {
    await route();
    say(`Saved the quota of ${orgId}: ${kse} KSE seats, ${kre} KRE sessions${expires ? `, licenses until ${expires}` : ""}.`);
  }
}

// ---- signing in and routing ---------------------------------------------------------

const PAGES = { licenses: licensesPage, members: membersPage, keys: keysPage, sessions: sessionsPage, usage: usagePage, audit: auditPage, orgs: orgsPage };

function showWho() {
  const signedIn = Boolean(sessionStorage.getItem(KEY));
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("who").textContent = signedIn ? (org() ? `Organization ${org()}` : "Operator") : "";
}

async function route(quiet) {
  clearTimeout(refreshTimer);
  showWho();
  if (!sessionStorage.getItem(KEY)) {
    if (location.hash) history.replaceState(null, "", "/");
    document.getElementById("sign-in-page") || location.reload();
    return;
  }
  const name = (location.hash.replace(/^#\//, "") || (org() ? "licenses" : "orgs"));
  const render = PAGES[name] || licensesPage;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (name !== "orgs" && !org()) {
    page("Choose an organization", el("p", {}, "Open Organizations and pick one with Manage."));
    return;
  }
  try {
    await render();
  } catch (error) {
    page("Not available", el("p", { id: "page-error" }, explain(error)));
    if (!quiet) say(explain(error), "error");
  }
}

async function signIn(event) {
  event.preventDefault();
  const key = document.getElementById("sign-in-key").value.trim();
  const orgId = document.getElementById("sign-in-org").value.trim();
  sessionStorage.setItem(KEY, key);
  sessionStorage.setItem(ORG, orgId);
  try {
    // Admin pages need an Owner's or Admin's key: listing members asks for one.
    if (orgId) await api("ListMembers", { orgId, pageSize: 1 });
    else await api("ListOrganizations", { pageSize: 1 });
  } catch (error) {
    sessionStorage.clear();
    say(`Not signed in: ${explain(error)}`, "error");
    return;
  }
  say(orgId ? `Signed in to ${orgId}.` : "Signed in as the operator.");
  const target = orgId ? "#/licenses" : "#/orgs";
  if (location.hash === target) await route(true);
  else location.hash = target;
}

function signOut() {
  sessionStorage.clear();
  clearTimeout(refreshTimer);
  location.replace("/");
}

document.getElementById("sign-in").addEventListener("submit", signIn);
document.getElementById("sign-out").addEventListener("click", signOut);
window.addEventListener("hashchange", () => route());
if (sessionStorage.getItem(KEY)) route();

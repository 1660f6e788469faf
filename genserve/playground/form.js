// JSON schema (pydantic's) → form controls, and the form back to a request body.
//
// Only what the user changed, and the required fields, are sent: the server's defaults then
// stay the server's, and rules like "`lora_scale` needs a LoRA" are not tripped by a default
// the user never touched. The form is `novalidate`: the server's 422 is the one source of truth.

// The queue always answers JSON and never streams tokens (deployments/endpoints.py `prepare`),
// so these fields would do nothing here.
const QUEUE_IGNORED = new Set(["response_format", "stream"]);
// Strings this long take file contents (base64, a data: URI or an uploaded file's URL).
const FILE_MIN_LENGTH = 1_000_000;
// Optional fields start collapsed when there are more of them than this (personalization's
// seventy training settings), open otherwise (the inference endpoints have at most 21).
const OPEN_OPTIONS_MAX = 24;

// {schema, nullable} with `anyOf: [X, null]` unwrapped and `$ref`s resolved.
export function unwrap(prop, defs) {
  let schema = prop;
  let nullable = false;
  if (Array.isArray(prop.anyOf)) {
    const other = prop.anyOf.filter((s) => s.type !== "null");
    nullable = other.length < prop.anyOf.length;
    schema = other.length === 1 ? { ...prop, ...other[0], anyOf: undefined } : prop;
  }
  if (schema.$ref) {
    schema = { ...defs[schema.$ref.split("/").pop()], ...schema, $ref: undefined };
  }
  return { schema, nullable };
}

function kindOf(schema) {
  if (Array.isArray(schema.enum)) return "select";
  if (schema.type === "boolean") return "checkbox";
  if (schema.type === "integer" || schema.type === "number") return "number";
  if (schema.type === "string") return "string";
  return "json"; // arrays, nested objects, unions: edited as JSON
}

function bounds(schema) {
  const parts = [];
  const lo = schema.minimum ?? schema.exclusiveMinimum;
  const hi = schema.maximum ?? schema.exclusiveMaximum;
  if (lo !== undefined || hi !== undefined) {
    const open = (x, excl) => (x === undefined ? "" : `${x}${excl ? " (excl.)" : ""}`);
    parts.push(`${open(lo, schema.exclusiveMinimum !== undefined)} – ` +
               `${open(hi, schema.exclusiveMaximum !== undefined)}`);
  }
  if (schema.multipleOf) parts.push(`multiple of ${schema.multipleOf}`);
  if (schema.maxLength && schema.maxLength < FILE_MIN_LENGTH) {
    parts.push(`≤ ${schema.maxLength} chars`);
  }
  return parts.join(", ");
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  node.append(...children);
  return node;
}

// The control's initial text: what "unchanged" is compared against.
function initialText(kind, schema) {
  const value = schema.default ?? (kind === "json" && "default" in schema ? null : undefined);
  if (value === undefined || value === null) return "";
  return kind === "json" ? JSON.stringify(value) : String(value);
}

function control(id, name, kind, schema, nullable, required) {
  const attrs = { id, name, "data-kind": kind, "aria-required": required ? "true" : false };
  if (kind === "select") {
    const options = schema.enum.map((v) => el("option", { value: v, text: v }));
    if (nullable || schema.default === undefined) {
      options.unshift(el("option", { value: "", text: required ? "— choose —" : "(none)" }));
    }
    const select = el("select", attrs, ...options);
    select.value = initialText(kind, schema);
    return select;
  }
  if (kind === "checkbox") {
    return el("input", { ...attrs, type: "checkbox", checked: schema.default === true });
  }
  if (kind === "number") {
    const step = schema.multipleOf ?? (schema.type === "integer" ? 1 : "any");
    return el("input", { ...attrs, type: "number", step, min: schema.minimum,
                         max: schema.maximum, value: initialText(kind, schema),
                         placeholder: nullable ? "(none)" : undefined });
  }
  const example = Array.isArray(schema.examples) ? schema.examples[0] : undefined;
  const placeholder = example === undefined ? undefined
    : (kind === "json" ? JSON.stringify(example) : String(example)).slice(0, 120);
  const long = kind === "json" || /prompt|text|content/.test(name) ||
    (schema.maxLength ?? 0) >= FILE_MIN_LENGTH;
  const value = initialText(kind, schema);
  if (long) {
    const area = el("textarea", { ...attrs, rows: kind === "json" ? 3 : 2, placeholder,
                                  spellcheck: kind === "json" ? "false" : undefined });
    area.value = value;
    return area;
  }
  return el("input", { ...attrs, type: "text", value, placeholder,
                       maxlength: schema.maxLength, spellcheck: "false" });
}

// A file picker next to a large string field: an upload (the field then holds the stored
// file's URL) where the field takes URLs, else the file inline as a data: URI.
function filePicker(id, input, takesUrls, upload) {
  const picker = el("input", { type: "file", id: `${id}-file`, "aria-label": "choose a file" });
  picker.addEventListener("change", async () => {
    const file = picker.files[0];
    if (!file) return;
    input.value = "";
    input.placeholder = "reading…";
    if (takesUrls) {
      input.value = await upload(file);
    } else {
      input.value = await new Promise((resolve, reject) => {
        const reader = new FileReader();
        reader.onload = () => resolve(reader.result);
        reader.onerror = () => reject(reader.error);
        reader.readAsDataURL(file);
      });
    }
    input.dispatchEvent(new Event("input"));
  });
  return picker;
}

// Fills `form` from `schema`; returns `read()`, which gives the request body (throws an Error
// naming the field when a JSON field does not parse).
export function buildForm(form, prefix, schema, { upload }) {
  form.replaceChildren();
  const defs = schema.$defs ?? {};
  const required = new Set(schema.required ?? []);
  const names = Object.keys(schema.properties).filter((n) => !QUEUE_IGNORED.has(n));
  names.sort((a, b) => required.has(b) - required.has(a)); // stable: schema order otherwise
  const fields = [];
  const optional = el("div", { class: "fields" });
  const main = el("div", { class: "fields" });
  for (const name of names) {
    const { schema: s, nullable } = unwrap(schema.properties[name], defs);
    const kind = kindOf(s);
    const id = `f-${prefix}-${name}`;
    const input = control(id, name, kind, s, nullable, required.has(name));
    const label = el("label", { for: id, text: s.title ?? name });
    if (required.has(name)) label.append(el("span", { class: "req", text: " *" }));
    const hint = [s.description, bounds(s), s.default !== undefined && s.default !== null
      ? `default ${JSON.stringify(s.default)}` : ""].filter(Boolean).join(" · ");
    const row = el("div", { class: `field ${kind}`, "data-field": name }, label, input);
    if (kind === "string" && (s.maxLength ?? 0) >= FILE_MIN_LENGTH) {
      row.append(filePicker(id, input, /URL/.test(s.description ?? ""), upload));
    }
    row.append(el("small", { text: hint }));
    (required.has(name) ? main : optional).append(row);
    fields.push({ name, kind, input, nullable, required: required.has(name),
                  initial: kind === "checkbox" ? input.checked : input.value,
                  hasDefault: s.default !== undefined && s.default !== null,
                  integer: s.type === "integer" });
  }
  form.append(main);
  if (optional.childElementCount) {
    const count = optional.childElementCount;
    form.append(el("details", { class: "options", open: count <= OPEN_OPTIONS_MAX },
                   el("summary", { text: `Options (${count})` }), optional));
  }
  return () => readForm(fields);
}

function readForm(fields) {
  const body = {};
  for (const f of fields) {
    const raw = f.kind === "checkbox" ? f.input.checked : f.input.value;
    if (raw === f.initial && !f.required) continue;
    if (f.kind === "checkbox") {
      body[f.name] = raw;
    } else if (raw.trim() === "") {
      // Cleared: null where the field takes it and its default is something else (`seed`:
      // null = random); otherwise left out, so a missing required field is the server's 422.
      if (f.nullable && f.hasDefault) body[f.name] = null;
    } else if (f.kind === "number") {
      body[f.name] = f.integer ? parseInt(raw, 10) : parseFloat(raw);
    } else if (f.kind === "json") {
      try {
        body[f.name] = JSON.parse(raw);
      } catch (err) {
        throw new Error(`${f.name}: not valid JSON (${err.message})`);
      }
    } else {
      body[f.name] = raw;
    }
  }
  return body;
}

/**
 * Typed JSON (runs.proto, "Typed JSON"): the text the service sends in `Run.config_json` and
 * `Run.values_json` beside the old Struct. Read here so that NaN and ±Infinity come back as
 * numbers (a Struct turned into JSON cannot hold them). JavaScript has one number type, so
 * the ints and whole floats that Python tells apart are all `number` here.
 */
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";

const FLOAT_TAG = "$float";
const OBJECT_TAG = "$object";
const NONFINITE: Record<string, number> = { NaN: NaN, Infinity: Infinity, "-Infinity": -Infinity };

function untag(value: unknown, wrapped = false): JsonValue {
  if (Array.isArray(value)) return value.map((item) => untag(item));
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>);
    if (!wrapped && entries.length === 1) {
      const [key, inner] = entries[0];
      if (key === FLOAT_TAG) {
        if (typeof inner !== "string" || !(inner in NONFINITE)) {
          throw new Error(`typed JSON has {"$float": ${JSON.stringify(inner)}}`);
        }
        return NONFINITE[inner];
      }
      if (key === OBJECT_TAG) return untag(inner, true);
    }
    return Object.fromEntries(entries.map(([key, item]) => [key, untag(item)]));
  }
  return value as JsonValue;
}

/** The document typed JSON `text` holds. */
export function parseTypedJson(text: string): JsonObject {
  const document = untag(JSON.parse(text));
  if (document === null || typeof document !== "object" || Array.isArray(document)) {
    throw new Error("typed JSON must be an object");
  }
  return document;
}

/**
 * Each bench writes its own `## Title` section of bench/README.md; this replaces that section (up to
 * the next `## ` heading) or appends it, leaving every other bench's section as it is.
 */
import { readFileSync, writeFileSync } from "node:fs"
import { pathToFileURL } from "node:url"

// CK_BENCH_DIR: set by lib/plainNode.ts when this runs transpiled from node_modules/.cache
const README = process.env["CK_BENCH_DIR"] !== undefined
  ? new URL("README.md", pathToFileURL(process.env["CK_BENCH_DIR"] + "/"))
  : new URL("../README.md", import.meta.url)

/** `markdown` starts with its own `## Title` line. */
export const writeReadmeSection = (markdown: string): void => {
  const heading = markdown.slice(0, markdown.indexOf("\n") === -1 ? markdown.length : markdown.indexOf("\n"))
  let text: string
  try {
    text = readFileSync(README, "utf8")
  } catch {
    text = "# Benchmarks\n"
  }
  const section = markdown.trimEnd() + "\n"
  const start = text.indexOf(`\n${heading}\n`)
  if (start === -1) {
    text = `${text.trimEnd()}\n\n${section}`
  } else {
    const next = text.indexOf("\n## ", start + 1)
    text = text.slice(0, start + 1) + section + (next === -1 ? "" : "\n" + text.slice(next + 1))
  }
  writeFileSync(README, text.trimEnd() + "\n")
}

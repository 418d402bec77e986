/**
 * Runs the examples of the docs, so they cannot drift: `sh` code blocks are split into commands
 * (backslash-newline continues a line, `#` starts a comment), words are split like a POSIX shell
 * (quotes, `$VAR` / `${VAR}` from the variables given), and commands starting with `curl` or
 * `taskmill` are returned for the tests to run.
 */

/** Commands of the `sh` blocks of a markdown text that start with `program`. */
export function docExamples(markdown: string, program: 'curl' | 'taskmill'): string[] {
  return codeBlocks(markdown)
    .filter((block) => block.lang === 'sh')
    .flatMap((block) => shellCommands(block.body))
    .map((command) => command.text)
    .filter((text) => text.startsWith(`${program} `));
}

/** A fenced code block of a markdown text: its language, its text, the line of its opening fence. */
export interface CodeBlock {
  lang: string;
  body: string;
  line: number;
}

/** Every fenced code block of a markdown text, in order (indented ones, as in list items, too). */
export function codeBlocks(markdown: string): CodeBlock[] {
  return [...markdown.matchAll(/^( *)```(\w*)\n([\s\S]*?)^\1```/gm)].map((m) => ({
    lang: m[2],
    body: m[3].replace(new RegExp(`^${m[1]}`, 'gm'), ''),
    line: markdown.slice(0, m.index).split('\n').length,
  }));
}

/** The commands of a shell block: one a line (backslash-newline continues it), blank and comment lines left out. */
export function shellCommands(body: string): { text: string; line: number }[] {
  const commands: { text: string; line: number }[] = [];
  const lines = body.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const first = i;
    let text = lines[i];
    while (text.endsWith('\\') && i + 1 < lines.length) text = `${text.slice(0, -1)} ${lines[++i].trim()}`;
    text = text.trim();
    if (text !== '' && !text.startsWith('#')) commands.push({ text, line: first });
  }
  return commands;
}

/** Splits a command line into words like sh does (quotes, backslashes, variables, `#` comments). */
export function shellWords(line: string, vars: Record<string, string> = {}): string[] {
  const words: string[] = [];
  let word: string | undefined;
  let i = 0;
  const expand = (): string => {
    const m = /^\$(?:\{(\w+)\}|(\w+))/.exec(line.slice(i));
    if (!m) {
      i++;
      return '$';
    }
    i += m[0].length;
    const name = m[1] ?? m[2];
    if (!(name in vars)) throw new Error(`example uses $${name}, which the test does not define: ${line}`);
    return vars[name];
  };
  while (i < line.length) {
    const c = line[i];
    if (c === ' ' || c === '\t') {
      if (word !== undefined) words.push(word);
      word = undefined;
      i++;
    } else if (c === '#' && word === undefined) {
      break;
    } else if (c === "'") {
      const end = line.indexOf("'", i + 1);
      if (end < 0) throw new Error(`unterminated quote: ${line}`);
      word = (word ?? '') + line.slice(i + 1, end);
      i = end + 1;
    } else if (c === '"') {
      word ??= '';
      i++;
      while (i < line.length && line[i] !== '"') {
        if (line[i] === '\\' && '"\\$'.includes(line[i + 1])) {
          word += line[i + 1];
          i += 2;
        } else if (line[i] === '$') {
          word += expand();
        } else {
          word += line[i++];
        }
      }
      if (line[i] !== '"') throw new Error(`unterminated quote: ${line}`);
      i++;
    } else if (c === '\\') {
      word = (word ?? '') + (line[i + 1] ?? '');
      i += 2;
    } else if (c === '$') {
      word = (word ?? '') + expand();
    } else {
      word = (word ?? '') + c;
      i++;
    }
  }
  if (word !== undefined) words.push(word);
  return words;
}

/** Runs a documented `curl` command with fetch (the options the docs use: -X, -H, -d, -s, -f). */
export async function runCurl(
  command: string,
  vars: Record<string, string>,
): Promise<{ status: number; json: unknown; text: string }> {
  const words = shellWords(command, vars).slice(1);
  let method: string | undefined;
  let body: string | undefined;
  let url: string | undefined;
  const headers: Record<string, string> = {};
  for (let i = 0; i < words.length; i++) {
    const w = words[i];
    if (w === '-X' || w === '--request') method = words[++i];
    else if (w === '-H' || w === '--header') {
      const [k, ...v] = words[++i].split(':');
      headers[k.trim().toLowerCase()] = v.join(':').trim();
    } else if (w === '-d' || w === '--data') body = words[++i];
    else if (/^-[sSfi]+$/.test(w) || w === '--fail') continue;
    else if (w.startsWith('-'))
      throw new Error(`curl option ${w} is not supported by the doc test: ${command}`);
    else url = w;
  }
  if (!url) throw new Error(`no URL in: ${command}`);
  const response = await fetch(url, {
    method: method ?? (body === undefined ? 'GET' : 'POST'),
    headers,
    body,
  });
  const text = await response.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: response.status, json, text };
}

/** The ```ts code blocks of a markdown text, without their fences. */
export function tsBlocks(markdown: string): string[] {
  return [...markdown.matchAll(/^```ts\n([\s\S]*?)^```/gm)].map((m) => m[1]);
}

/**
 * An examples/ file as the docs show it: imports of the package's entry written as a user writes them
 * (`'../index.ts'` -> `'taskmill'`).
 */
export function asDocumented(source: string): string {
  return source.replaceAll(`'../index.ts'`, `'taskmill'`);
}

/** Marks a ```ts block that is not a whole program: an excerpt the tests need not run. */
export const FRAGMENT_MARK = '// fragment';

// The openai npm SDK against the gateway: node client.mjs BASE_URL -> one JSON object on stdout.
// tests/gateway/test_node_sdk.py runs it and asserts on what the SDK itself parsed.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.argv[2], apiKey: "anything", maxRetries: 0 });
const ask = [{ role: "user", content: "hello there" }];
const out = {};

const chat = await client.chat.completions.create({ model: "bot", messages: ask });
out.chat = { id: chat.id, content: chat.choices[0].message.content };

const stream = await client.chat.completions.create({
  model: "bot", messages: ask, stream: true, stream_options: { include_usage: true },
});
let text = "";
let chunks = 0;
let usage = null;
for await (const chunk of stream) {
  chunks += 1;
  text += chunk.choices[0]?.delta?.content ?? "";
  usage = chunk.usage ?? usage;
}
out.stream = { content: text, chunks, total_tokens: usage?.total_tokens ?? null };

const tools = await client.chat.completions.create({
  model: "bot",
  messages: [{ role: "user", content: "What is the weather in Paris?" }],
  tools: [{ type: "function", function: {
    name: "get_weather", parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  } }],
});
const call = tools.choices[0].message.tool_calls[0];
out.tool = { name: call.function.name, arguments: JSON.parse(call.function.arguments) };

const structured = await client.chat.completions.create({
  model: "bot", messages: ask,
  response_format: { type: "json_schema", json_schema: { name: "city", strict: true, schema: {
    type: "object", properties: { name: { type: "string" } }, required: ["name"], additionalProperties: false,
  } } },
});
out.json_schema = JSON.parse(structured.choices[0].message.content);

// the npm SDK asks for base64 unless told otherwise, and decodes it into floats itself
const b64 = await client.embeddings.create({ model: "embed", input: "first text" });
const floats = await client.embeddings.create({ model: "embed", input: "first text", encoding_format: "float" });
out.embeddings = { base64: b64.data[0].embedding, float: floats.data[0].embedding };

out.models = (await client.models.list()).data.map((m) => m.id);

try {
  await client.chat.completions.create({ model: "no-such-model", messages: ask });
  out.not_found = null;
} catch (err) {
  out.not_found = { is_not_found: err instanceof OpenAI.NotFoundError, status: err.status, code: err.code };
}

console.log(JSON.stringify(out));

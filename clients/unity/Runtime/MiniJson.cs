// MiniJson: a small JSON reader/writer, so the client needs no JSON package (Unity's JsonUtility
// cannot read the free-form maps of the protocol, and Newtonsoft is not in every project).
// Objects become Dictionary<string, object>, arrays List<object>, numbers double (or long when
// integral), plus string, bool and null.
using System;
using System.Collections;
using System.Collections.Generic;
using System.Globalization;
using System.Text;

namespace Voxpipe
{
    public sealed class JsonException : Exception
    {
        public JsonException(string message) : base(message) { }
    }

    public static class MiniJson
    {
        public static object Parse(string text)
        {
            var reader = new Reader(text);
            reader.SkipSpace();
            object value = reader.ReadValue(0);
            reader.SkipSpace();
            if (!reader.AtEnd) throw new JsonException("trailing characters at " + reader.Position);
            return value;
        }

        public static string Serialize(object value)
        {
            var sb = new StringBuilder();
            Write(sb, value);
            return sb.ToString();
        }

        static void Write(StringBuilder sb, object value)
        {
            if (value == null) { sb.Append("null"); return; }
            var s = value as string;
            if (s != null) { WriteString(sb, s); return; }
            if (value is bool) { sb.Append((bool)value ? "true" : "false"); return; }
            if (value is int || value is long || value is short || value is byte)
            {
                sb.Append(Convert.ToInt64(value).ToString(CultureInfo.InvariantCulture));
                return;
            }
            if (value is double || value is float)
            {
                double d = Convert.ToDouble(value);
                if (double.IsNaN(d) || double.IsInfinity(d)) throw new JsonException("NaN/Infinity is not JSON");
                sb.Append(d.ToString("R", CultureInfo.InvariantCulture));
                return;
            }
            var map = value as IDictionary<string, object>;
            if (map != null)
            {
                sb.Append('{');
                bool first = true;
                foreach (var kv in map)
                {
                    if (!first) sb.Append(',');
                    first = false;
                    WriteString(sb, kv.Key);
                    sb.Append(':');
                    Write(sb, kv.Value);
                }
                sb.Append('}');
                return;
            }
            var list = value as IEnumerable;
            if (list != null)
            {
                sb.Append('[');
                bool first = true;
                foreach (var item in list)
                {
                    if (!first) sb.Append(',');
                    first = false;
                    Write(sb, item);
                }
                sb.Append(']');
                return;
            }
            throw new JsonException("cannot serialize " + value.GetType().Name);
        }

        static void WriteString(StringBuilder sb, string s)
        {
            sb.Append('"');
            foreach (char c in s)
            {
                switch (c)
                {
                    case '"': sb.Append("\\\""); break;
                    case '\\': sb.Append("\\\\"); break;
                    case '\n': sb.Append("\\n"); break;
                    case '\r': sb.Append("\\r"); break;
                    case '\t': sb.Append("\\t"); break;
                    default:
                        if (c < 0x20) sb.Append("\\u").Append(((int)c).ToString("x4"));
                        else sb.Append(c);
                        break;
                }
            }
            sb.Append('"');
        }

        sealed class Reader
        {
            const int MaxDepth = 64;
            readonly string text;
            int pos;

            public Reader(string text) { this.text = text; }
            public bool AtEnd { get { return pos >= text.Length; } }
            public int Position { get { return pos; } }

            public void SkipSpace()
            {
                while (pos < text.Length && (text[pos] == ' ' || text[pos] == '\t' || text[pos] == '\n' || text[pos] == '\r')) pos++;
            }

            char Peek()
            {
                if (pos >= text.Length) throw new JsonException("unexpected end of JSON");
                return text[pos];
            }

            void Expect(string word)
            {
                if (string.CompareOrdinal(text, pos, word, 0, word.Length) != 0)
                    throw new JsonException("expected '" + word + "' at " + pos);
                pos += word.Length;
            }

            public object ReadValue(int depth)
            {
                if (depth > MaxDepth) throw new JsonException("JSON nests too deeply");
                char c = Peek();
                switch (c)
                {
                    case '{': return ReadObject(depth);
                    case '[': return ReadArray(depth);
                    case '"': return ReadString();
                    case 't': Expect("true"); return true;
                    case 'f': Expect("false"); return false;
                    case 'n': Expect("null"); return null;
                    default: return ReadNumber();
                }
            }

            Dictionary<string, object> ReadObject(int depth)
            {
                var map = new Dictionary<string, object>();
                pos++;
                SkipSpace();
                if (Peek() == '}') { pos++; return map; }
                while (true)
                {
                    SkipSpace();
                    if (Peek() != '"') throw new JsonException("expected a key at " + pos);
                    string key = ReadString();
                    SkipSpace();
                    if (Peek() != ':') throw new JsonException("expected ':' at " + pos);
                    pos++;
                    SkipSpace();
                    map[key] = ReadValue(depth + 1);
                    SkipSpace();
                    char c = Peek();
                    pos++;
                    if (c == '}') return map;
                    if (c != ',') throw new JsonException("expected ',' or '}' at " + (pos - 1));
                }
            }

            List<object> ReadArray(int depth)
            {
                var list = new List<object>();
                pos++;
                SkipSpace();
                if (Peek() == ']') { pos++; return list; }
                while (true)
                {
                    SkipSpace();
                    list.Add(ReadValue(depth + 1));
                    SkipSpace();
                    char c = Peek();
                    pos++;
                    if (c == ']') return list;
                    if (c != ',') throw new JsonException("expected ',' or ']' at " + (pos - 1));
                }
            }

            string ReadString()
            {
                pos++; // opening quote
                var sb = new StringBuilder();
                while (true)
                {
                    char c = Peek();
                    pos++;
                    if (c == '"') return sb.ToString();
                    if (c != '\\') { sb.Append(c); continue; }
                    char e = Peek();
                    pos++;
                    switch (e)
                    {
                        case '"': sb.Append('"'); break;
                        case '\\': sb.Append('\\'); break;
                        case '/': sb.Append('/'); break;
                        case 'b': sb.Append('\b'); break;
                        case 'f': sb.Append('\f'); break;
                        case 'n': sb.Append('\n'); break;
                        case 'r': sb.Append('\r'); break;
                        case 't': sb.Append('\t'); break;
                        case 'u':
                            if (pos + 4 > text.Length) throw new JsonException("bad \\u escape");
                            sb.Append((char)int.Parse(text.Substring(pos, 4), NumberStyles.HexNumber, CultureInfo.InvariantCulture));
                            pos += 4;
                            break;
                        default: throw new JsonException("bad escape at " + pos);
                    }
                }
            }

            object ReadNumber()
            {
                int start = pos;
                while (pos < text.Length && "+-0123456789.eE".IndexOf(text[pos]) >= 0) pos++;
                string token = text.Substring(start, pos - start);
                if (token.Length == 0) throw new JsonException("unexpected character at " + start);
                long l;
                if (token.IndexOfAny(new[] { '.', 'e', 'E' }) < 0 &&
                    long.TryParse(token, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out l))
                    return l;
                double d;
                if (!double.TryParse(token, NumberStyles.Float, CultureInfo.InvariantCulture, out d))
                    throw new JsonException("bad number '" + token + "'");
                return d;
            }
        }
    }
}

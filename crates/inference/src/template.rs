//! Chat templates: the Jinja template shipped inside a model, rendered with minijinja the way
//! Hugging Face `apply_chat_template` renders it (`trim_blocks`, `lstrip_blocks`, Python string
//! methods, `raise_exception`).
//!
//! Rendering is bounded by a fuel limit, so a hostile template or conversation cannot loop for
//! ever. A model without a template of its own gets its architecture's known template
//! ([`known_template`], e.g. Gemma's turns for `gemma3`); templates that minijinja cannot compile,
//! and unknown architectures, fall back to ChatML.

use minijinja::{Environment, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Instructions one render may execute (a 100-message conversation needs a few thousand).
const RENDER_FUEL: u64 = 2_000_000;

/// ChatML, used when a model has no template of its own (as llama-server does).
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + \
     message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}\
     {{ '<|im_start|>assistant\n' }}{% endif %}";

/// Gemma's turn format (Gemma 1-3 share it): no system role, so a system message is prefixed to
/// the first user turn; the assistant is `model`; every turn ends with `<end_of_turn>`, which
/// llama.cpp counts as an end-of-generation token for these architectures.
pub const GEMMA: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}\
     {% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}\
     {% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}\
     {% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\
     {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}\
     {% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}\
     {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + message['content'] + '<end_of_turn>\n' }}\
     {% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

/// Llama 3's header-delimited turns: every message is `<|start_header_id|>role<|end_header_id|>`,
/// a blank line and the content, ended by `<|eot_id|>`.
pub const LLAMA3: &str = "{{ bos_token }}{% for message in messages %}\
     {{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}\
     {% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// Mistral's instruction format: user turns in `[INST] ... [/INST]`, each answer ended by the
/// end-of-sequence token; no system role, so a system message is prefixed to the first user turn.
pub const MISTRAL: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}\
     {% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}\
     {% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}\
     {% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\
     {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}\
     {% if message['role'] == 'user' %}{{ '[INST] ' + (first_user_prefix if loop.first else '') + message['content'] + ' [/INST]' }}\
     {% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}";

/// Phi-3's turns: `<|role|>`, a newline, the content and `<|end|>`.
pub const PHI3: &str = "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}\
     {% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}";

/// The templates a model can be given by name (`plexus model import --chat-template NAME`).
pub const NAMED: [(&str, &str); 5] =
    [("chatml", CHATML), ("gemma", GEMMA), ("llama3", LLAMA3), ("mistral", MISTRAL), ("phi3", PHI3)];

/// The built-in template called `name`.
pub fn named(name: &str) -> Option<&'static str> {
    NAMED.iter().find(|(n, _)| *n == name).map(|(_, source)| *source)
}

/// Texts that end a turn in the formats above. A template that writes one of them marks the
/// end of each reply with it, so generation stops at it (when the model's vocabulary has it as
/// one token) even where the file does not list it as an end-of-generation token.
pub const END_OF_TURN_TEXTS: [&str; 4] = ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>"];

/// The known template for a GGUF `general.architecture`, for models whose file carries none:
/// `(name, source)`. Only architectures whose chat format is fixed by the architecture are
/// listed; a `llama` file may be Llama 2, Llama 3, Mistral or a ChatML fine-tune, so it gets
/// ChatML unless imported with `--chat-template`.
pub fn known_template(architecture: &str) -> Option<(&'static str, &'static str)> {
    match architecture {
        "gemma" | "gemma2" | "gemma3" | "gemma3n" => Some(("gemma", GEMMA)),
        "phi3" => Some(("phi3", PHI3)),
        _ => None,
    }
}

/// The template source a model is rendered with, if not ChatML: its own, else its
/// architecture's known one.
pub fn effective_source<'a>(own: Option<&'a str>, architecture: &str) -> Option<&'a str> {
    own.or_else(|| known_template(architecture).map(|(_, source)| source))
}

/// One chat message, as the template sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("source_bytes", &self.source.len()).finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are the texts templates may refer to.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, Error> {
        let mut env = Environment::new();
        // Hugging Face renders chat templates with trim_blocks and lstrip_blocks on.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::Template(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(RENDER_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |_fmt: String| -> String {
            // Dates make a prompt depend on the wall clock, which breaks reproducibility and
            // prefix caching; templates get a fixed date instead.
            "01 Jan 2026".to_owned()
        });
        env.add_template_owned("chat", source.to_owned()).map_err(|e| Error::Template(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            source: source.to_owned(),
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// The model's template (its own, else its architecture's known one), or ChatML when it has
    /// none or minijinja cannot compile it.
    pub fn for_model(own: Option<&str>, architecture: &str, bos_token: &str, eos_token: &str) -> Self {
        if let Some(src) = effective_source(own, architecture) {
            match ChatTemplate::new(src, bos_token, eos_token) {
                Ok(t) => return t,
                Err(e) => {
                    tracing::warn!(target: "inference::template", error = %e, "chat template does not compile; using ChatML")
                }
            }
        }
        ChatTemplate::new(CHATML, bos_token, eos_token).expect("the built-in ChatML template compiles")
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The [`END_OF_TURN_TEXTS`] this template writes.
    pub fn end_of_turn_texts(&self) -> Vec<&'static str> {
        END_OF_TURN_TEXTS.into_iter().filter(|t| self.source.contains(t)).collect()
    }

    /// Checks that a template an operator supplies renders a plain conversation (system, user,
    /// assistant, user, with the reply header) to a prompt that holds every message's text.
    pub fn check_renders(&self) -> Result<(), Error> {
        let probe = [
            ChatMessage::new("system", "plexus-probe-system"),
            ChatMessage::new("user", "plexus-probe-user-1"),
            ChatMessage::new("assistant", "plexus-probe-assistant"),
            ChatMessage::new("user", "plexus-probe-user-2"),
        ];
        let out = self.render(&probe, true)?;
        match probe.iter().find(|m| !out.contains(&m.content)) {
            Some(m) => Err(Error::Template(format!("the template drops the {} message's text", m.role))),
            None => Ok(()),
        }
    }

    /// Renders `messages`, ending with the assistant header when `add_generation_prompt`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, Error> {
        let tmpl = self.env.get_template("chat").map_err(|e| Error::Template(e.to_string()))?;
        tmpl.render(context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            tools => Value::from(()),
        })
        .map_err(|e| Error::Template(e.to_string()))
    }

    /// The prompt for a chat request. With `continue_final_message` the last message must be the
    /// assistant's, and the prompt ends right after its content (no end-of-turn), so generation
    /// continues it, as vLLM does.
    pub fn render_prompt(&self, messages: &[ChatMessage], continue_final_message: bool) -> Result<String, Error> {
        if messages.is_empty() {
            return Err(Error::EmptyMessages);
        }
        if !continue_final_message {
            return self.render(messages, true);
        }
        let (last, earlier) = messages.split_last().expect("checked non-empty above");
        if last.role != "assistant" {
            return Err(Error::invalid(
                "continue_final_message",
                "the last message must have role `assistant` to be continued",
            ));
        }
        if last.content.is_empty() {
            return self.render(earlier, true);
        }
        let full = self.render(messages, false)?;
        match full.rfind(&last.content) {
            Some(at) => Ok(full[..at + last.content.len()].to_owned()),
            None => Err(Error::Template("the template does not render the final message's content verbatim".into())),
        }
    }

    /// The text every conversation that has no system message starts with (often the model's
    /// default system prompt), found by rendering two different one-message conversations.
    pub fn default_prefix(&self) -> Option<String> {
        let a = self.render(&[ChatMessage::new("user", "\u{1}")], true).ok()?;
        let b = self.render(&[ChatMessage::new("user", "\u{2}")], true).ok()?;
        let mut len = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
        while !a.is_char_boundary(len) {
            len -= 1;
        }
        (len > 0).then(|| a[..len].to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The template stored in SmolLM2-135M-Instruct's GGUF.
    pub(crate) const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_smollm2_with_default_system_prompt() {
        let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
        let out = t.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = t.render(&[ChatMessage::new("system", "S"), ChatMessage::new("user", "Hi")], false).unwrap();
        assert_eq!(out, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
    }

    #[test]
    fn default_prefix_is_the_system_prompt_and_user_header() {
        let t = ChatTemplate::new(SMOLLM2, "", "").unwrap();
        assert_eq!(
            t.default_prefix().unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\n"
        );
    }

    #[test]
    fn continues_the_final_assistant_message() {
        let t = ChatTemplate::new(SMOLLM2, "", "").unwrap();
        let msgs = [ChatMessage::new("user", "Count"), ChatMessage::new("assistant", "1, 2,")];
        let out = t.render_prompt(&msgs, true).unwrap();
        assert!(out.ends_with("<|im_start|>assistant\n1, 2,"), "{out}");
        let err = t.render_prompt(&msgs[..1], true).unwrap_err();
        assert!(matches!(err, Error::InvalidParam { param: "continue_final_message", .. }));
        let empty = [ChatMessage::new("user", "Count"), ChatMessage::new("assistant", "")];
        assert_eq!(t.render_prompt(&empty, true).unwrap(), t.render(&msgs[..1], true).unwrap());
        assert!(matches!(t.render_prompt(&[], false), Err(Error::EmptyMessages)));
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}\
                   {{ messages[0].content.strip().upper() }}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(t.render(&[ChatMessage::new("user", "  hi ")], false).unwrap(), "HI");
        let err = t.render(&[ChatMessage::new("system", "x")], false).unwrap_err();
        assert!(err.to_string().contains("first must be user"), "{err}");
    }

    #[test]
    fn runaway_templates_run_out_of_fuel() {
        let src = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert!(matches!(t.render(&[], false), Err(Error::Template(_))));
    }

    #[test]
    fn broken_templates_fall_back_to_chatml() {
        let t = ChatTemplate::for_model(Some("{% for %}"), "llama", "", "");
        assert_eq!(t.source(), CHATML);
        let out = t.render(&[ChatMessage::new("user", "a")], true).unwrap();
        assert_eq!(out, "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn gemma_files_without_a_template_get_gemma_turns() {
        let t = ChatTemplate::for_model(None, "gemma3", "<bos>", "<eos>");
        assert_eq!(t.source(), GEMMA);
        let out = t
            .render(
                &[
                    ChatMessage::new("system", "Be brief."),
                    ChatMessage::new("user", "Hi"),
                    ChatMessage::new("assistant", "Hello."),
                    ChatMessage::new("user", "Bye"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            out,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n\
             <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
        // Gemma has no turn order but user/model alternation: anything else is the request's fault.
        let err = t.render(&[ChatMessage::new("assistant", "x")], true).unwrap_err();
        assert!(err.to_string().contains("must alternate"), "{err}");
        // A continued reply ends right after its text, with no end of turn.
        let cont = t
            .render_prompt(&[ChatMessage::new("user", "Count"), ChatMessage::new("assistant", "1, 2,")], true)
            .unwrap();
        assert!(cont.ends_with("<start_of_turn>model\n1, 2,"), "{cont}");
    }

    #[test]
    fn own_templates_win_and_unknown_architectures_get_chatml() {
        assert_eq!(effective_source(Some("{{ x }}"), "gemma3"), Some("{{ x }}"));
        assert_eq!(effective_source(None, "llama"), None);
        assert_eq!(ChatTemplate::for_model(None, "qwen2", "", "").source(), CHATML);
    }

    #[test]
    fn named_templates_render_their_formats() {
        let msgs = [
            ChatMessage::new("system", "S"),
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "Yo"),
            ChatMessage::new("user", "Bye"),
        ];
        let render = |name: &str| {
            let t = ChatTemplate::new(named(name).unwrap(), "<s>", "</s>").unwrap();
            t.check_renders().unwrap();
            (t.render(&msgs, true).unwrap(), t.end_of_turn_texts())
        };
        assert_eq!(
            render("llama3"),
            (
                "<s><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
                 <|start_header_id|>assistant<|end_header_id|>\n\nYo<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>\
                 <|start_header_id|>assistant<|end_header_id|>\n\n"
                    .to_string(),
                vec!["<|eot_id|>"]
            )
        );
        assert_eq!(render("mistral"), ("<s>[INST] S\n\nHi [/INST]Yo</s>[INST] Bye [/INST]".to_string(), vec![]));
        assert_eq!(
            render("phi3"),
            ("<|system|>\nS<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nYo<|end|>\n<|user|>\nBye<|end|>\n<|assistant|>\n".to_string(), vec!["<|end|>"])
        );
        assert_eq!(render("chatml").1, vec!["<|im_end|>"]);
        assert_eq!(render("gemma").1, vec!["<end_of_turn>"]);
        assert!(named("llama2").is_none());
        // Every named template can continue a reply.
        for (name, source) in NAMED {
            let t = ChatTemplate::new(source, "<s>", "</s>").unwrap();
            let cont = t
                .render_prompt(&[ChatMessage::new("user", "Count"), ChatMessage::new("assistant", "1, 2,")], true)
                .unwrap();
            assert!(cont.ends_with("1, 2,"), "{name}: {cont}");
        }
        // A template that forgets a message is refused when an operator supplies it.
        let lossy = ChatTemplate::new("{{ messages[-1]['content'] }}", "", "").unwrap();
        assert!(lossy.check_renders().unwrap_err().to_string().contains("system"));
    }
}
